-- TimescaleDB, when the server has it: ohlcvs becomes a hypertable, the summaries continuous
-- aggregates with refresh policies. Without the extension this file changes nothing and
-- 003_plain_aggregates.sql provides the same relation names.
-- Continuous aggregates are created WITH NO DATA, which TimescaleDB allows inside a transaction;
-- `python -m scripts.database init` then materialises existing rows (refresh_continuous_aggregate
-- is a procedure and cannot run in a transaction block), and backfills refresh their own range.
-- The library must be preloaded: creating the extension without that ends the session (FATAL),
-- which no exception handler can catch, so that case is refused before trying.
-- coin_for_rich.use_timescaledb = off (for the server, a database, a role, or the session as
-- `init --plain` sets it) keeps plain PostgreSQL.
--
-- Columnstore (compression) is on by default: ohlcvs chunks of 7 days, segmented by market and
-- ordered by time, a market's week one batch of 10,080 rows (each column compressed together; the
-- database's timescaledb.compression_batch_size_limit, where the TimescaleDB version allows more
-- than its default 1,000: 9.8 against 11.1 B a candle measured, see docs/benchmarks.md),
-- compressed once they are coin_for_rich.compress_after_days old (init sets it from
-- TIMESCALEDB_COMPRESS_AFTER_DAYS; 3 when unset; 0 turns the policies off). Of the summary levels
-- only the hourly one is stored (a compressed continuous aggregate); the others are views over
-- ohlcvs or over it: stored, the sub-hour levels alone would hold 0.3 bars per minute stored.

DO $$
DECLARE
    preload text;
    batch_rows integer;
BEGIN
    IF current_setting('coin_for_rich.use_timescaledb', true) = 'off' THEN
        RAISE NOTICE 'plain PostgreSQL requested: not using timescaledb';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'timescaledb is not available: using plain PostgreSQL relations';
        RETURN;
    END IF;
    BEGIN
        preload := current_setting('shared_preload_libraries');
    EXCEPTION WHEN insufficient_privilege THEN
        preload := NULL;  -- cannot tell; try
    END;
    IF preload IS NOT NULL AND NOT 'timescaledb' = ANY (
           SELECT regexp_replace(btrim(entry, ' "'), '^.*/|\.so$', '', 'g')
           FROM unnest(string_to_array(preload, ',')) AS entry) THEN
        RAISE EXCEPTION 'TimescaleDB is installed on the server but not preloaded'
            USING HINT = 'add timescaledb to shared_preload_libraries in postgresql.conf, restart PostgreSQL, run init again';
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'timescaledb could not be loaded (%): using plain PostgreSQL relations', SQLERRM;
        RETURN;
    END;

    PERFORM create_hypertable('ohlcvs', 'time',
                              chunk_time_interval => INTERVAL '7 days',
                              if_not_exists => TRUE,
                              migrate_data => TRUE,
                              create_default_indexes => FALSE);
    -- A database made with 1-day chunks gets 7-day chunks from its next new chunk on.
    PERFORM set_chunk_time_interval('ohlcvs', INTERVAL '7 days');
    IF NOT (SELECT compression_enabled FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = 'ohlcvs') THEN
        ALTER TABLE ohlcvs SET (timescaledb.compress,
                                timescaledb.compress_segmentby = 'exchange, base_id, quote_id',
                                timescaledb.compress_orderby = 'time');
    END IF;

    -- Batches of a market's whole chunk (7 x 1,440 minutes) for every later session of this
    -- database, the policies' background jobs included; TimescaleDB versions whose limit stops at
    -- 1,000 get their maximum. A write into compressed history decompresses the whole weeks it
    -- touches: a backfill transaction (up to 20,000 rows over as many as 20 markets) can reach
    -- 400,000 rows, past TimescaleDB's default cap of 100,000 per transaction, so the cap goes.
    SELECT least(10080, max_val::integer) INTO batch_rows
    FROM pg_settings WHERE name = 'timescaledb.compression_batch_size_limit';
    IF batch_rows IS NOT NULL THEN
        BEGIN
            EXECUTE format('ALTER DATABASE %I SET timescaledb.compression_batch_size_limit = %s',
                           current_database(), batch_rows);
            EXECUTE format('ALTER DATABASE %I SET timescaledb.max_tuples_decompressed_per_dml_transaction = 0',
                           current_database());
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'only the owner of database % can set its compression batch size (%): '
                          'compressed batches stay at TimescaleDB''s default', current_database(), SQLERRM;
        END;
    END IF;
END
$$;

-- The summary levels. Only the hourly level is stored: a continuous aggregate straight from ohlcvs,
-- compressed like it. The 5-, 15- and 30-minute levels are views over ohlcvs, the 6-hour to 7-day
-- levels views over the hourly level: a year of daily bars reads 8,760 hourly rows, and nothing is
-- stored twice. time_bucket's default origin (Monday 2000-01-03) is used; the plain path uses the
-- same origin. A database initialised with those levels as continuous aggregates gets the views.
DO $$
DECLARE
    level record;
    after_days integer := coalesce(nullif(current_setting('coin_for_rich.compress_after_days', true), ''), '3')::integer;
    after interval;
    current_after interval;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;

    IF to_regclass('ohlcvs_summary_1hour') IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM timescaledb_information.continuous_aggregates
           WHERE view_name = 'ohlcvs_summary_1hour') THEN
        RAISE EXCEPTION 'ohlcvs_summary_1hour exists but is not a continuous aggregate (the database was '
                        'initialised without TimescaleDB); initialise a new database to use TimescaleDB';
    END IF;
    IF to_regclass('ohlcvs_summary_1hour') IS NULL THEN
        CREATE MATERIALIZED VIEW ohlcvs_summary_1hour
        WITH (timescaledb.continuous, timescaledb.materialized_only = false,
              timescaledb.create_group_indexes = false) AS
        SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, exchange, base_id, quote_id,
               first(open, time) AS open, max(high) AS high, min(low) AS low,
               last(close, time) AS close, sum(volume) AS volume
        FROM ohlcvs GROUP BY bucket, exchange, base_id, quote_id WITH NO DATA;
        CREATE INDEX ohlcvs_summary_1hour_market_idx ON ohlcvs_summary_1hour (exchange, base_id, quote_id, bucket);
    END IF;
    PERFORM add_continuous_aggregate_policy('ohlcvs_summary_1hour',
                                            start_offset => INTERVAL '12 hours',
                                            end_offset => INTERVAL '1 minute',
                                            schedule_interval => INTERVAL '10 minutes',
                                            if_not_exists => TRUE);
    IF NOT (SELECT compression_enabled FROM timescaledb_information.continuous_aggregates
            WHERE view_name = 'ohlcvs_summary_1hour') THEN
        ALTER MATERIALIZED VIEW ohlcvs_summary_1hour SET (
            timescaledb.compress = true,
            timescaledb.compress_segmentby = 'exchange, base_id, quote_id',
            timescaledb.compress_orderby = 'bucket');
    END IF;
    -- A compressed bucket must lie beyond the refresh policy's window (12 hours).
    after := greatest(make_interval(days => after_days), INTERVAL '13 hours');
    SELECT (config ->> 'compress_after')::interval INTO current_after
    FROM timescaledb_information.jobs
    WHERE proc_name = 'policy_compression' AND hypertable_name = (
        SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates
        WHERE view_name = 'ohlcvs_summary_1hour');
    IF after_days <= 0 OR current_after IS DISTINCT FROM after THEN
        PERFORM remove_compression_policy('ohlcvs_summary_1hour', if_exists => TRUE);
    END IF;
    IF after_days > 0 AND current_after IS DISTINCT FROM after THEN
        PERFORM add_compression_policy('ohlcvs_summary_1hour', compress_after => after);
    END IF;

    -- 004_analytics_views.sql recreates these; they may depend on a level about to become a view.
    DROP VIEW IF EXISTS geo_daily_return, weekly_return, top_20_quoted_vol, common_basequote_30;
    -- The levels (init writes them from common/levels.py): all but the stored one are views.
    FOR level IN
        SELECT name, width, CASE WHEN timescale_view_of = 'ohlcvs' THEN 'time' ELSE 'bucket' END AS time_column,
               timescale_view_of AS source
        FROM ohlcv_aggregate_levels WHERE timescale_view_of IS NOT NULL ORDER BY ordinal
    LOOP
        IF EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates
                   WHERE view_schema = current_schema() AND view_name = level.name) THEN
            EXECUTE format('DROP MATERIALIZED VIEW %I', level.name);
        ELSIF to_regclass(level.name) IS NOT NULL
              AND (SELECT relkind FROM pg_class WHERE oid = to_regclass(level.name)) <> 'v' THEN
            RAISE EXCEPTION '% exists but is not a view (the database was initialised without '
                            'TimescaleDB); initialise a new database to use TimescaleDB', level.name;
        END IF;
        EXECUTE format(
            'CREATE OR REPLACE VIEW %1$I AS '
            'SELECT time_bucket(%2$L::interval, %3$I) AS bucket, exchange, base_id, quote_id, '
            'first(open, %3$I) AS open, max(high) AS high, min(low) AS low, '
            'last(close, %3$I) AS close, sum(volume) AS volume '
            'FROM %4$I GROUP BY 1, exchange, base_id, quote_id',
            level.name, level.width, level.time_column, level.source);
    END LOOP;

    after := make_interval(days => after_days);
    SELECT (config ->> 'compress_after')::interval INTO current_after
    FROM timescaledb_information.jobs
    WHERE proc_name = 'policy_compression' AND hypertable_name = 'ohlcvs';
    IF after_days <= 0 OR current_after IS DISTINCT FROM after THEN
        PERFORM remove_compression_policy('ohlcvs', if_exists => TRUE);
    END IF;
    IF after_days > 0 AND current_after IS DISTINCT FROM after THEN
        PERFORM add_compression_policy('ohlcvs', compress_after => after);
    END IF;
END
$$;
