-- Analytics views over the daily and hourly summaries (the same names on both database paths).

-- Geometric mean daily return per market over the last 30 days.
CREATE OR REPLACE VIEW geo_daily_return AS
SELECT exchange, base_id, quote_id,
       count(*) AS days,
       exp(avg(ln(close / open))) - 1 AS geo_daily_return
FROM ohlcvs_summary_daily
WHERE bucket >= now() - INTERVAL '30 days' AND open > 0 AND close > 0
GROUP BY exchange, base_id, quote_id;

-- Return per market over the last 7 days: last close over first open.
CREATE OR REPLACE VIEW weekly_return AS
SELECT exchange, base_id, quote_id,
       (array_agg(close ORDER BY bucket DESC))[1] / NULLIF((array_agg(open ORDER BY bucket))[1], 0) - 1
           AS weekly_return
FROM ohlcvs_summary_daily
WHERE bucket >= now() - INTERVAL '7 days'
GROUP BY exchange, base_id, quote_id;

-- The 20 markets with the largest quote-currency volume (volume x close) over the last 24 hours.
CREATE OR REPLACE VIEW top_20_quoted_vol AS
SELECT exchange, base_id, quote_id, sum(volume * close) AS quoted_vol
FROM ohlcvs_summary_1hour
WHERE bucket >= now() - INTERVAL '24 hours'
GROUP BY exchange, base_id, quote_id
ORDER BY quoted_vol DESC
LIMIT 20;

-- The 30 base/quote pairs listed on the most exchanges (at least two), by 30-day quote volume.
CREATE OR REPLACE VIEW common_basequote_30 AS
SELECT s.base_id, s.quote_id,
       count(DISTINCT s.exchange) AS exchanges,
       coalesce(sum(d.volume * d.close), 0) AS quoted_vol_30d
FROM symbol_exchange s
LEFT JOIN ohlcvs_summary_daily d
       ON d.exchange = s.exchange AND d.base_id = s.base_id AND d.quote_id = s.quote_id
      AND d.bucket >= now() - INTERVAL '30 days'
WHERE s.is_trading
GROUP BY s.base_id, s.quote_id
HAVING count(DISTINCT s.exchange) >= 2
ORDER BY exchanges DESC, quoted_vol_30d DESC
LIMIT 30;
