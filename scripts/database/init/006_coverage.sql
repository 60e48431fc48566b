-- Coverage: per market, the time ranges [start_time, end_time) known complete. A REST request that
-- succeeded covers the range it asked for (source 'rest': the exchange's final word); a websocket
-- connection covers the minutes it delivered without interruption (source 'ws'). A minute without a
-- row inside a covered range had no trades: it is not a gap. Ranges of one market and source are
-- kept merged (overlapping or touching ranges become one row), so the table stays small.
-- A plain table on both PostgreSQL and TimescaleDB.

CREATE TABLE IF NOT EXISTS ohlcvs_coverage (
    exchange    text        NOT NULL,
    base_id     text        NOT NULL,
    quote_id    text        NOT NULL,
    source      text        NOT NULL CHECK (source IN ('rest', 'ws')),
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, base_id, quote_id, source, start_time),
    CHECK (start_time < end_time)
);
CREATE INDEX IF NOT EXISTS ohlcvs_coverage_end_idx ON ohlcvs_coverage (exchange, base_id, quote_id, end_time);
