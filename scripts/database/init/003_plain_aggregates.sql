-- Plain PostgreSQL (no TimescaleDB): the same summary relation names as ordinary tables, and
-- refresh_ohlcv_aggregates(start, end) which rebuilds every level over the buckets a range touches,
-- and again every bucket that was still open when it last ran. The platform calls it after writes
-- (backfills refresh their own range); populate_agg.sql refreshes all.
-- Buckets use the origin TimescaleDB's time_bucket uses (Monday 2000-01-03), so both paths agree.

-- ohlcv_aggregate_levels lists the levels (name, width, source = the level below, ordinal): init
-- writes it from common/levels.py before this file runs.

DO $$
DECLARE
    level record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    FOR level IN SELECT name FROM ohlcv_aggregate_levels ORDER BY ordinal LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I ('
            ' bucket timestamptz NOT NULL, exchange text NOT NULL, base_id text NOT NULL, quote_id text NOT NULL,'
            ' open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL,'
            ' volume numeric NOT NULL, PRIMARY KEY (exchange, base_id, quote_id, bucket))', level.name);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (bucket DESC)', level.name || '_bucket_idx', level.name);
    END LOOP;
END
$$;

-- One level's buckets in [lo, hi) rebuilt from its source relation (ohlcvs or the level below);
-- returns the rows written. lo and hi are bucket boundaries of the level.
CREATE OR REPLACE FUNCTION rebuild_ohlcv_level(level_name text, source text, width interval,
                                               lo timestamptz, hi timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    origin      CONSTANT timestamptz := TIMESTAMPTZ '2000-01-03 00:00:00+00';
    source_time CONSTANT text := CASE WHEN source = 'ohlcvs' THEN 'time' ELSE 'bucket' END;
    n           integer;
BEGIN
    EXECUTE format('DELETE FROM %I WHERE bucket >= $1 AND bucket < $2', level_name) USING lo, hi;
    EXECUTE format(
        'INSERT INTO %1$I (bucket, exchange, base_id, quote_id, open, high, low, close, volume) '
        'SELECT date_bin($3, %3$I, $4) AS b, exchange, base_id, quote_id, '
        '(min(ARRAY[extract(epoch FROM %3$I), open]))[2], max(high), min(low), '
        '(max(ARRAY[extract(epoch FROM %3$I), close]))[2], sum(volume) '
        'FROM %2$I WHERE %3$I >= $1 AND %3$I < $2 GROUP BY b, exchange, base_id, quote_id '
        'ON CONFLICT (exchange, base_id, quote_id, bucket) DO UPDATE SET open = EXCLUDED.open, '
        'high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume',
        level_name, source, source_time)
    USING lo, hi, width, origin;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The end of the bucket of this width that holds the instant just before t: t rounded up to a
-- bucket boundary, where a rebuild of [.., t) stops.
CREATE OR REPLACE FUNCTION ohlcv_bucket_end(width interval, t timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_bin(width, t - INTERVAL '1 microsecond', TIMESTAMPTZ '2000-01-03 00:00:00+00') + width
$$;

-- Each level is built from the level below it (1m -> 5m -> 15m -> ... -> 7D): the buckets nest, so
-- open = first open, high = max, low = min, close = last close, volume = sum hold at every level.
-- First and last are the smallest and largest [epoch, value] numeric arrays (exact, no sort per
-- bucket): about half the cost of array_agg(... ORDER BY ...) on PostgreSQL 15.
-- From level first_ordinal up (1 = every level). With open_pass_end (the pending_end of the
-- refresh_ohlcv_open_buckets call that follows in the same refresh), a level's buckets from its
-- open_from on are left to that call, which rebuilds them after the level below is complete:
-- rebuilt here too, they would be built twice per refresh, the first time from a stale level below.
DROP FUNCTION IF EXISTS refresh_ohlcv_aggregate_range(timestamptz, timestamptz);
DROP FUNCTION IF EXISTS refresh_ohlcv_aggregate_range(timestamptz, timestamptz, integer);
CREATE OR REPLACE FUNCTION refresh_ohlcv_aggregate_range(range_start timestamptz, range_end timestamptz,
                                                         first_ordinal integer DEFAULT 1,
                                                         open_pass_end timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    origin    CONSTANT timestamptz := TIMESTAMPTZ '2000-01-03 00:00:00+00';
    level     record;
    lo        timestamptz;
    hi        timestamptz;
    open_hi   timestamptz;
    build_hi  timestamptz;
    rows_done integer := 0;
BEGIN
    FOR level IN SELECT * FROM ohlcv_aggregate_levels WHERE ordinal >= first_ordinal ORDER BY ordinal LOOP
        lo := date_bin(level.width, range_start, origin);
        hi := ohlcv_bucket_end(level.width, range_end);
        open_hi := ohlcv_bucket_end(level.width, open_pass_end);  -- NULL without open_pass_end
        build_hi := hi;
        IF level.open_from < open_hi AND hi <= open_hi THEN  -- the open pass covers [open_from, hi)
            build_hi := least(hi, greatest(lo, level.open_from));
        END IF;
        IF build_hi > lo THEN
            rows_done := rows_done + rebuild_ohlcv_level(level.name, level.source, level.width, lo, build_hi);
        END IF;
        range_start := lo;
        range_end := hi;
    END LOOP;
    RETURN rows_done;
END
$$;

-- The first level (5 minutes, from ohlcvs) over [range_start, range_end) for the given markets only
-- (parallel arrays): the updater rebuilds each batch's markets as soon as that batch commits, while
-- its next batch is being written; the level holds the one row per five 1-minute rows, so the
-- levels above it are then cheap to rebuild for all markets at once (refresh_ohlcv_aggregates'
-- upper range, which also keeps the open-bucket marks). It shares its lock with other such calls,
-- not with a whole refresh.
DROP FUNCTION IF EXISTS refresh_ohlcv_market_range(timestamptz, timestamptz, text[], text[], text[]);
CREATE OR REPLACE FUNCTION refresh_ohlcv_first_level(range_start timestamptz, range_end timestamptz,
                                                     exchanges text[], base_ids text[], quote_ids text[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    origin    CONSTANT timestamptz := TIMESTAMPTZ '2000-01-03 00:00:00+00';
    level     record;
    lo        timestamptz;
    hi        timestamptz;
    n         integer;
BEGIN
    IF range_end <= range_start THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(hashtext('refresh_ohlcv_aggregates'));
    SELECT * INTO STRICT level FROM ohlcv_aggregate_levels WHERE ordinal = 1;
    lo := date_bin(level.width, range_start, origin);
    hi := ohlcv_bucket_end(level.width, range_end);
    EXECUTE format(
        'DELETE FROM %I WHERE bucket >= $1 AND bucket < $2 AND (exchange, base_id, quote_id) IN '
        '(SELECT * FROM unnest($3::text[], $4::text[], $5::text[]))', level.name)
    USING lo, hi, exchanges, base_ids, quote_ids;
    EXECUTE format(
        'INSERT INTO %1$I (bucket, exchange, base_id, quote_id, open, high, low, close, volume) '
        'SELECT date_bin($3, s.time, $4) AS b, s.exchange, s.base_id, s.quote_id, '
        '(min(ARRAY[extract(epoch FROM s.time), s.open]))[2], max(s.high), min(s.low), '
        '(max(ARRAY[extract(epoch FROM s.time), s.close]))[2], sum(s.volume) '
        'FROM ohlcvs s JOIN unnest($5::text[], $6::text[], $7::text[]) AS m (e, b, q) '
        'ON s.exchange = m.e AND s.base_id = m.b AND s.quote_id = m.q '
        'WHERE s.time >= $1 AND s.time < $2 GROUP BY 1, s.exchange, s.base_id, s.quote_id '
        'ON CONFLICT (exchange, base_id, quote_id, bucket) DO UPDATE SET open = EXCLUDED.open, '
        'high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume',
        level.name)
    USING lo, hi, level.width, origin, exchanges, base_ids, quote_ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The two-argument form of earlier releases; the new one accepts the same calls.
DROP FUNCTION IF EXISTS refresh_ohlcv_aggregates(timestamptz, timestamptz);

-- Each level's own open buckets, [open_from, pending_end), rebuilt from the level below (rebuilt
-- first, levels in order). Per level: the 7-day bucket is open all week, but rebuilding it takes only
-- its daily rows, not a week of 1-minute rows at every level.
CREATE OR REPLACE FUNCTION refresh_ohlcv_open_buckets(pending_end timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    level       record;
    hi          timestamptz;
    rows_done   integer := 0;
BEGIN
    FOR level IN SELECT * FROM ohlcv_aggregate_levels WHERE open_from IS NOT NULL ORDER BY ordinal LOOP
        hi := ohlcv_bucket_end(level.width, pending_end);
        CONTINUE WHEN hi <= level.open_from;
        rows_done := rows_done + rebuild_ohlcv_level(level.name, level.source, level.width, level.open_from, hi);
    END LOOP;
    RETURN rows_done;
END
$$;

-- Rebuild [range_start, range_end) (NULL = from the oldest / to the newest row), then the levels
-- above the first over [upper_start, upper_end) (whose first level refresh_ohlcv_first_level has
-- rebuilt), then every level's buckets that were open at the previous refresh (rows may have been
-- written into them since), and remember which materialised buckets are still open at as_of (a
-- bucket is closed one minute after its end, like TimescaleDB's policies' end_offset).
DROP FUNCTION IF EXISTS refresh_ohlcv_aggregates(timestamptz, timestamptz, timestamptz);
CREATE OR REPLACE FUNCTION refresh_ohlcv_aggregates(range_start timestamptz, range_end timestamptz,
                                                    as_of timestamptz DEFAULT now(),
                                                    upper_start timestamptz DEFAULT NULL,
                                                    upper_end timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    settle        CONSTANT interval := INTERVAL '1 minute';
    level         record;
    pending_end   timestamptz;
    rows_done     integer := 0;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RAISE EXCEPTION 'TimescaleDB keeps these aggregates: use CALL refresh_continuous_aggregate(...)';
    END IF;
    -- One refresh at a time: each reads and rewrites the open-bucket marks.
    PERFORM pg_advisory_xact_lock(hashtext('refresh_ohlcv_aggregates'));
    IF range_start IS NULL THEN
        SELECT min(time) INTO range_start FROM ohlcvs;
    END IF;
    IF range_end IS NULL THEN
        SELECT max(time) + INTERVAL '1 minute' INTO range_end FROM ohlcvs;
    END IF;
    IF EXISTS (SELECT 1 FROM ohlcv_aggregate_levels WHERE open_from IS NOT NULL) THEN
        SELECT greatest(as_of, max(time) + INTERVAL '1 minute') INTO pending_end FROM ohlcvs;
    END IF;
    IF range_start IS NOT NULL AND range_end IS NOT NULL AND range_end > range_start THEN
        rows_done := rows_done + refresh_ohlcv_aggregate_range(range_start, range_end, 1, pending_end);
    END IF;
    IF upper_start IS NOT NULL AND upper_end IS NOT NULL AND upper_end > upper_start THEN
        rows_done := rows_done + refresh_ohlcv_aggregate_range(upper_start, upper_end, 2, pending_end);
    END IF;
    IF pending_end IS NOT NULL THEN
        rows_done := rows_done + refresh_ohlcv_open_buckets(pending_end);
    END IF;
    FOR level IN SELECT name, width FROM ohlcv_aggregate_levels LOOP
        EXECUTE format(
            'UPDATE ohlcv_aggregate_levels SET open_from = '
            '(SELECT min(bucket) FROM %I WHERE bucket > $1) WHERE name = $2', level.name)
        USING as_of - settle - level.width, level.name;
    END LOOP;
    RETURN rows_done;
END
$$;
