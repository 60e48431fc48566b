-- Refresh every aggregate level over all data at once (psql script):
--   psql "$DATABASE" -f scripts/database/once/populate_agg.sql
-- With TimescaleDB each continuous aggregate is refreshed by CALL (which must run outside a
-- transaction block) up to its last closed bucket: buckets that can still change stay above the
-- watermark, where real-time aggregation shows every row. Without it, refresh_ohlcv_aggregates()
-- rebuilds the summary tables.
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS has_timescaledb \gset
\if :has_timescaledb
CALL refresh_continuous_aggregate('ohlcvs_summary_5min', NULL,
    time_bucket(INTERVAL '5 minutes', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_15min', NULL,
    time_bucket(INTERVAL '15 minutes', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_30min', NULL,
    time_bucket(INTERVAL '30 minutes', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_1hour', NULL,
    time_bucket(INTERVAL '1 hour', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_6hour', NULL,
    time_bucket(INTERVAL '6 hours', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_12hour', NULL,
    time_bucket(INTERVAL '12 hours', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_daily', NULL,
    time_bucket(INTERVAL '1 day', now() - INTERVAL '1 minute'));
CALL refresh_continuous_aggregate('ohlcvs_summary_7day', NULL,
    time_bucket(INTERVAL '7 days', now() - INTERVAL '1 minute'));
\else
SELECT refresh_ohlcv_aggregates(NULL, NULL) AS summary_rows_written;
\endif
