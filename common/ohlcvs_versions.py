"""Versions of stored history: every writer of `ohlcvs` or the summaries says, after its commit, what
it may have changed, so the web's cache of rendered history (`web.history_cache`) never serves a bar
the database no longer holds.

Each scope - one market's `ohlcvs` rows, or the summaries of every market - has a Redis list, newest
entry first, of `version:from_ms`: the version goes up by one per write, and `from_ms` is the oldest
bar open time (ms) the write touched, so a reader drops only what it cached from there on. A list
made afresh (a new scope, or Redis lost its data) starts at a random version, so a reader can never
mistake a new history for the one it saw. Bumping is best effort: when Redis cannot be reached the
write stands and the cache's TTL (`WEB_CACHE_TTL_SECONDS`) bounds how long the change stays hidden.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping

import redis

from common.candle import MarketKey
from common.redis_clients import sync_client
from common.redis_keys import OHLCVS_VERSION_SUMMARIES, ohlcvs_version_key
from common.settings import Settings, get_settings

log = logging.getLogger(__name__)

KEEP_ENTRIES = 64
"""Entries kept per list: a reader that missed more writes than this drops the whole scope."""
EARLIEST_MS = -62_135_596_800_000  # 0001-01-01: "everything"

BUMP = """
local keep = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local head = redis.call('LINDEX', key, 0)
  local version = ARGV[1]
  if head then
    version = string.format('%.0f', tonumber(string.match(head, '^(%d+)')) + 1)
  end
  redis.call('LPUSH', key, version .. ':' .. ARGV[i + 2])
  redis.call('LTRIM', key, 0, keep - 1)
end
return #KEYS
"""


def parse_entry(raw: bytes | str | None) -> tuple[int, int] | None:
    """`(version, from_ms)` of one list entry; None for a missing or malformed one."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    version, _, from_ms = text.partition(":")
    try:
        return int(version), int(from_ms)
    except ValueError:
        return None


def bump(client: redis.Redis, oldest_by_key: Mapping[str, int]) -> None:
    """One entry on each list named in `oldest_by_key` (list key -> oldest ms written), atomically."""
    if not oldest_by_key:
        return
    start = secrets.randbelow(2**50)  # exact in the script's doubles, far from overflowing
    keys = list(oldest_by_key)
    client.eval(BUMP, len(keys), *keys, start, KEEP_ENTRIES, *(oldest_by_key[k] for k in keys))


def oldest_by_market(rows: Iterable[tuple[str, str, str, int]]) -> dict[MarketKey, int]:
    """The oldest bar time written per market, from `(exchange, base_id, quote_id, time_ms)` rows."""
    oldest: dict[MarketKey, int] = {}
    for exchange, base_id, quote_id, time_ms in rows:
        market = MarketKey(exchange, base_id, quote_id)
        if time_ms < oldest.get(market, time_ms + 1):
            oldest[market] = time_ms
    return oldest


_clients: dict[str, redis.Redis] = {}
"""One client per Redis URL for the life of the process (writers bump after every commit)."""


def _client(settings: Settings) -> redis.Redis:
    client = _clients.get(settings.redis_url)
    if client is None:
        client = _clients[settings.redis_url] = sync_client(settings)
    return client


def _bump_quietly(settings: Settings | None, oldest_by_key: Mapping[str, int], what: str) -> None:
    settings = settings or get_settings()
    try:
        bump(_client(settings), oldest_by_key)
    except (redis.RedisError, OSError) as error:
        log.warning("could not bump the %s version (web caches expire by TTL instead): %s", what, error)


def markets_written(settings: Settings | None, oldest: Mapping[MarketKey, int]) -> None:
    """After a commit that wrote these markets' `ohlcvs` rows (market -> oldest bar time, ms)."""
    delimiter = (settings or get_settings()).redis_key_delimiter
    keys = {ohlcvs_version_key(*market, delimiter=delimiter): ms for market, ms in oldest.items()}
    _bump_quietly(settings, keys, "market")


def summaries_refreshed(settings: Settings | None, from_ms: int | None) -> None:
    """After a refresh that may have rewritten summary buckets from `from_ms` on (None = all)."""
    _bump_quietly(
        settings, {OHLCVS_VERSION_SUMMARIES: EARLIEST_MS if from_ms is None else from_ms}, "summary"
    )
