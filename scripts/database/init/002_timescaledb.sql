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
                              chunk_time_interval => INTERVAL '1 day',
                              if_not_exists => TRUE,
                              migrate_data => TRUE,
                              create_default_indexes => FALSE);
END
$$;

-- One continuous aggregate per level, all straight from ohlcvs (works on every TimescaleDB 2.x).
-- time_bucket's default origin (Monday 2000-01-03) is used; the plain path uses the same origin.
DO $$
DECLARE
    level record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    FOR level IN
        SELECT * FROM (VALUES
            ('ohlcvs_summary_5min',  INTERVAL '5 minutes', INTERVAL '1 hour',  INTERVAL '1 minute', INTERVAL '1 minute'),
            ('ohlcvs_summary_15min', INTERVAL '15 minutes', INTERVAL '3 hours', INTERVAL '1 minute', INTERVAL '5 minutes'),
            ('ohlcvs_summary_30min', INTERVAL '30 minutes', INTERVAL '6 hours', INTERVAL '1 minute', INTERVAL '5 minutes'),
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
    END LOOP;
END
$$;
