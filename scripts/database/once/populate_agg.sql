-- Refresh every aggregate level over all data at once (psql script):
--   psql "$DATABASE" -f scripts/database/once/populate_agg.sql
-- With TimescaleDB each continuous aggregate is refreshed by CALL (which must run outside a
-- transaction block); without it, refresh_ohlcv_aggregates() rebuilds the summary tables.
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS has_timescaledb \gset
\if :has_timescaledb
CALL refresh_continuous_aggregate('ohlcvs_summary_5min', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_15min', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_30min', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_1hour', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_6hour', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_12hour', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_daily', NULL, NULL);
CALL refresh_continuous_aggregate('ohlcvs_summary_7day', NULL, NULL);
\else
SELECT refresh_ohlcv_aggregates(NULL, NULL) AS summary_rows_written;
\endif
