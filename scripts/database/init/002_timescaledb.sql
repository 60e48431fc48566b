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
-- ordered by time (a market's week is ten 1,000-row batches, each column compressed together),
-- compressed once they are coin_for_rich.compress_after_days old (init sets it from
-- TIMESCALEDB_COMPRESS_AFTER_DAYS; 3 when unset; 0 turns the policies off). The 5-, 15- and
-- 30-minute levels are views that aggregate ohlcvs at read time: materialised they would cost more
-- bytes than the compressed minutes themselves. The hourly and longer levels stay continuous
-- aggregates, compressed the same way.

DO $$
DECLARE
    preload text;
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
END
$$;

-- The hourly and longer levels: one continuous aggregate each, all straight from ohlcvs (works on
-- every TimescaleDB 2.x), compressed like ohlcvs. time_bucket's default origin (Monday 2000-01-03)
-- is used; the plain path uses the same origin. The minute levels below an hour are views.
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
    FOR level IN
        SELECT * FROM (VALUES
            ('ohlcvs_summary_5min',  INTERVAL '5 minutes'),
            ('ohlcvs_summary_15min', INTERVAL '15 minutes'),
            ('ohlcvs_summary_30min', INTERVAL '30 minutes')
        ) AS t(name, width)
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
            'CREATE OR REPLACE VIEW %I AS '
            'SELECT time_bucket(%L::interval, time) AS bucket, exchange, base_id, quote_id, '
            'first(open, time) AS open, max(high) AS high, min(low) AS low, '
            'last(close, time) AS close, sum(volume) AS volume '
            'FROM ohlcvs GROUP BY bucket, exchange, base_id, quote_id',
            level.name, level.width);
    END LOOP;

    FOR level IN
        SELECT * FROM (VALUES
            ('ohlcvs_summary_1hour', INTERVAL '1 hour',    INTERVAL '12 hours', INTERVAL '1 minute', INTERVAL '10 minutes'),
            ('ohlcvs_summary_6hour', INTERVAL '6 hours',   INTERVAL '3 days',   INTERVAL '1 minute', INTERVAL '30 minutes'),
            ('ohlcvs_summary_12hour', INTERVAL '12 hours', INTERVAL '6 days',   INTERVAL '1 minute', INTERVAL '1 hour'),
            ('ohlcvs_summary_daily', INTERVAL '1 day',     INTERVAL '10 days',  INTERVAL '1 minute', INTERVAL '1 hour'),
            ('ohlcvs_summary_7day',  INTERVAL '7 days',    INTERVAL '30 days',  INTERVAL '1 minute', INTERVAL '6 hours')
        ) AS t(name, width, start_offset, end_offset, schedule)
    LOOP
        IF to_regclass(level.name) IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM timescaledb_information.continuous_aggregates
               WHERE view_name = level.name) THEN
            RAISE EXCEPTION '% exists but is not a continuous aggregate (the database was initialised '
                            'without TimescaleDB); initialise a new database to use TimescaleDB', level.name;
        END IF;
        IF to_regclass(level.name) IS NULL THEN
            EXECUTE format(
                'CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS '
                'SELECT time_bucket(%L::interval, time) AS bucket, exchange, base_id, quote_id, '
                'first(open, time) AS open, max(high) AS high, min(low) AS low, '
                'last(close, time) AS close, sum(volume) AS volume '
                'FROM ohlcvs GROUP BY bucket, exchange, base_id, quote_id WITH NO DATA',
                level.name, level.width);
        END IF;
        PERFORM add_continuous_aggregate_policy(level.name::regclass,
                                                start_offset => level.start_offset,
                                                end_offset => level.end_offset,
                                                schedule_interval => level.schedule,
                                                if_not_exists => TRUE);
        IF NOT (SELECT compression_enabled FROM timescaledb_information.continuous_aggregates
                WHERE view_name = level.name) THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %I SET (timescaledb.compress = true, '
                           'timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L)',
                           level.name, 'exchange, base_id, quote_id', 'bucket');
        END IF;
        -- A compressed bucket must lie beyond the refresh policy's window.
        after := greatest(make_interval(days => after_days), level.start_offset + level.width);
        SELECT (config ->> 'compress_after')::interval INTO current_after
        FROM timescaledb_information.jobs
        WHERE proc_name = 'policy_compression' AND hypertable_name = (
            SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates
            WHERE view_name = level.name);
        IF after_days <= 0 OR current_after IS DISTINCT FROM after THEN
            PERFORM remove_compression_policy(level.name::regclass, if_exists => TRUE);
        END IF;
        IF after_days > 0 AND current_after IS DISTINCT FROM after THEN
            PERFORM add_compression_policy(level.name::regclass, compress_after => after);
        END IF;
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
