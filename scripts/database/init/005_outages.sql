-- Outages of the live pipeline: minutes of a market the websocket fetcher may have missed or seen
-- only in part (connection down, fetcher stopped, maintenance, a dropped frame). A REST backfill of
-- [start_time, end_time) repairs them. Recording the same outage twice keeps one row.

CREATE TABLE IF NOT EXISTS ohlcvs_outages (
    id           bigserial   PRIMARY KEY,
    exchange     text        NOT NULL,
    base_id      text        NOT NULL,
    quote_id     text        NOT NULL,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    reason       text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (start_time < end_time)
);
CREATE UNIQUE INDEX IF NOT EXISTS ohlcvs_outages_unique_idx
    ON ohlcvs_outages (exchange, base_id, quote_id, start_time, end_time, reason);
CREATE INDEX IF NOT EXISTS ohlcvs_outages_time_idx ON ohlcvs_outages (start_time DESC);
