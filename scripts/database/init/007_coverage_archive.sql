-- Coverage from Binance's public data archive (source 'archive'): a file whose SHA-256 matched its
-- .CHECKSUM covers the minutes it was asked for, final like a REST request. Databases created
-- before the archive was used carry the two-source CHECK of 006: replace it (idempotent).

ALTER TABLE ohlcvs_coverage DROP CONSTRAINT IF EXISTS ohlcvs_coverage_source_check;
ALTER TABLE ohlcvs_coverage
    ADD CONSTRAINT ohlcvs_coverage_source_check CHECK (source IN ('rest', 'ws', 'archive'));
