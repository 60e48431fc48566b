-- Refresh every aggregate level over all data at once (psql script):
--   psql "$DATABASE" -f scripts/database/once/populate_agg.sql
-- With TimescaleDB each continuous aggregate is refreshed by CALL (which must run outside a
-- transaction block) up to its last closed bucket: buckets that can still change stay above the
-- watermark, where real-time aggregation shows every row (every other level is a view there and
-- needs nothing). Without it, refresh_ohlcv_aggregates()
-- rebuilds the summary tables.
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS has_timescaledb \gset
\if :has_timescaledb
-- One CALL per level, each run by \gexec as its own top-level statement.
SELECT format('CALL refresh_continuous_aggregate(%L, NULL, time_bucket(%L::interval, now() - INTERVAL ''1 minute''))',
              name, width)
FROM ohlcv_aggregate_levels WHERE timescale_view_of IS NULL
\gexec
\else
SELECT refresh_ohlcv_aggregates(NULL, NULL) AS summary_rows_written;
\endif
