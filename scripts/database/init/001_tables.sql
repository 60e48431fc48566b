-- Core tables. Idempotent: safe to run on an empty or an already-initialised database.
-- Prices and volumes are NUMERIC without a typmod so the exchange's decimal text is kept exactly.

CREATE TABLE IF NOT EXISTS symbol_exchange (
    exchange    text        NOT NULL,
    base_id     text        NOT NULL,
    quote_id    text        NOT NULL,
    symbol      text        NOT NULL,
    is_trading  boolean     NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, base_id, quote_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS symbol_exchange_symbol_idx ON symbol_exchange (exchange, symbol);

CREATE TABLE IF NOT EXISTS ohlcvs (
    time      timestamptz NOT NULL,
    exchange  text        NOT NULL,
    base_id   text        NOT NULL,
    quote_id  text        NOT NULL,
    open      numeric     NOT NULL,
    high      numeric     NOT NULL,
    low       numeric     NOT NULL,
    close     numeric     NOT NULL,
    volume    numeric     NOT NULL,
    PRIMARY KEY (exchange, base_id, quote_id, time),
    CONSTRAINT ohlcvs_market_fkey FOREIGN KEY (exchange, base_id, quote_id)
        REFERENCES symbol_exchange (exchange, base_id, quote_id) ON UPDATE CASCADE
);
CREATE INDEX IF NOT EXISTS ohlcvs_time_idx ON ohlcvs (time DESC);

CREATE TABLE IF NOT EXISTS ohlcvs_errors (
    id                 bigserial   PRIMARY KEY,
    exchange           text        NOT NULL,
    symbol             text        NOT NULL,
    start_date         timestamptz,
    end_date           timestamptz,
    time_frame         text,
    ohlcv_section      text,
    resp_status_code   integer,
    exception_class    text,
    exception_message  text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ohlcvs_errors_market_idx ON ohlcvs_errors (exchange, symbol, start_date);
