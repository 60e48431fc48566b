"""The Redis sink and the updater against real Redis and PostgreSQL (no sockets).

What users and the updater see in Redis after a burst, the contract's exact shapes, and the
updater's promises: closed bars only, fill missing minutes only, nothing leaves Redis before the
database committed it (a database outage just makes bars wait), outages stored once.
"""

from __future__ import annotations

import asyncio
import json

import psycopg2
import pytest

from common.candle import Bar, Market
from common.coverage import REST, WS, CoverageRange, read_coverage, record_coverage
from common.db import LATE_CHANGE_REASON, connection, upsert_markets
from common.redis_clients import async_client
from common.redis_keys import WS_OUTAGES, WS_SUB_LIST, WS_SUB_REJECTED, ws_health_key, ws_send_key, ws_sub_key
from common.redis_records import OutageRecord, decode_bar, encode_bar, encode_waiting_bar
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.exchanges.base import WsCandle
from fetchers.ws import updater as updater_module
from fetchers.ws.sink import MAX_BARS_PER_SCRIPT, MarketKeys, RedisSink
from fetchers.ws.updater import Updater

pytestmark = pytest.mark.integration

T0 = 1_700_000_040_000
MARKET = Market("binance", "BTC", "USDT", "BTCUSDT")


def bar(minute: int, close: str, closed: bool = False) -> WsCandle:
    return WsCandle(
        "BTCUSDT", T0 + minute * MINUTE_MS, "37050.01000000", "37065.0", "37049.00", close, "1.50", closed
    )


def live(candle: WsCandle) -> Bar:
    return (candle.time, candle.open, candle.high, candle.low, candle.close, candle.volume)


def bar_json(candle: WsCandle) -> str:
    return encode_bar(live(candle))


def store(settings, bars: list[WsCandle], records: list = ()) -> None:
    async def run() -> None:
        client = async_client(settings, pack_with_hiredis=True)  # the fetcher's own client
        sink = RedisSink(client, "binance", "shard0/1", lambda attempt: 0.01)
        keys = MarketKeys.build("binance", "BTC", "USDT", "BTCUSDT", settings.redis_key_delimiter)
        for candle in bars:
            sink.add(keys, candle, 0.0)
        sink.add_records(list(records))
        await sink.flush()
        await client.aclose()

    asyncio.run(run())


@pytest.fixture
def market(settings):
    with connection(settings) as conn:
        upsert_markets(conn, [MARKET])
    return MARKET


def rows(settings) -> dict[int, tuple[str, ...]]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (extract(epoch from time) * 1000)::bigint, open::text, high::text, low::text, "
            "close::text, volume::text FROM ohlcvs ORDER BY 1"
        )
        return {int(t): tuple(rest) for t, *rest in cur.fetchall()}


def test_a_burst_sets_the_latest_bar_publishes_it_and_queues_it(settings, redis_server, market):
    client = redis_server.client()
    pubsub = client.pubsub()
    send = ws_send_key("binance", "BTC", "USDT")
    pubsub.subscribe(send)
    pubsub.get_message(timeout=1)
    store(settings, [bar(1, "37060.5"), bar(0, "37055.0", closed=True)])
    latest = {"time": T0 + MINUTE_MS, "open": "37050.01000000", "high": "37065.0", "low": "37049.00",
              "close": "37060.5", "volume": "1.50"}  # fmt: skip
    assert {k.decode(): v.decode() for k, v in client.hgetall(send).items()} == {
        k: str(v) for k, v in latest.items()
    }
    published = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert [json.loads(m["data"]) for m in published if m] == [latest]  # the older bar is not published
    # the sink's script writes exactly what common.redis_records encodes (compact, as documented)
    assert published[0]["data"].decode() == encode_bar(live(bar(1, "37060.5")))
    assert decode_bar(published[0]["data"]) == live(bar(1, "37060.5"))
    sub = ws_sub_key("binance", "BTC", "USDT")
    assert client.hget(sub, str(T0)).decode() == encode_waiting_bar(live(bar(0, "37055.0")), closed=True)
    assert client.hget(sub, str(T0 + MINUTE_MS)).decode() == encode_waiting_bar(
        live(bar(1, "37060.5")), closed=False
    )
    queued = {int(k): json.loads(v) for k, v in client.hgetall(ws_sub_key("binance", "BTC", "USDT")).items()}
    assert queued[T0 + MINUTE_MS] == latest and queued[T0]["closed"] is True
    assert client.smembers(WS_SUB_LIST) == {ws_sub_key("binance", "BTC", "USDT").encode()}
    assert int(client.hget(ws_health_key("binance"), "exchange_time_ms")) == T0 + MINUTE_MS

    store(settings, [bar(0, "1.0")])  # an older minute never moves the latest bar back
    assert client.hget(send, "time") == str(T0 + MINUTE_MS).encode()


class SteppingPipeline:
    """Runs a flush's commands one at a time and calls `look` after each: what another client (the
    updater) may see between the scripts of one flush."""

    def __init__(self, client, look) -> None:
        self.client, self.look, self.calls = client, look, []

    def evalsha(self, *args) -> None:
        self.calls.append(("evalsha", args))

    def rpush(self, *args) -> None:
        self.calls.append(("rpush", args))

    async def execute(self) -> None:
        for name, args in self.calls:
            await getattr(self.client, name)(*args)
            await self.look()


def test_a_flush_in_several_scripts_moves_the_clock_only_with_its_last_bar(settings):
    """A flush of more bars than one script takes runs as several scripts, and the updater may read
    between them. Its clock closes bars by time, so the clock must not move before every bar of the
    flush is in Redis: else a market's earlier update is closed and stored, and the last one, which
    follows in the same flush, can never replace it (a live bar only fills a missing minute) while
    the evidence vouches for the minute."""
    delimiter = settings.redis_key_delimiter
    btc = MarketKeys.build("binance", "BTC", "USDT", "BTCUSDT", delimiter)
    last = encode_waiting_bar(live(bar(0, "2.0")), closed=False)
    early_closed: list[str] = []

    async def run() -> None:
        client = async_client(settings, pack_with_hiredis=True)
        sink = RedisSink(client, "binance", "shard0/1", lambda attempt: 0.01)
        sink.add(btc, bar(0, "1.0"), 0.0)  # an early update of minute 0 is in Redis
        await sink.flush()
        for i in range(MAX_BARS_PER_SCRIPT):  # then a burst: other markets two minutes on ...
            other = MarketKeys.build("binance", f"C{i:04d}", "USDT", f"C{i:04d}USDT", delimiter)
            sink.add(other, WsCandle(other.symbol, T0 + 2 * MINUTE_MS, "1", "1", "1", "1", "1"), 0.0)
        sink.add(btc, bar(0, "2.0"), 0.0)  # ... and minute 0's last update, behind them

        async def look() -> None:  # the updater's rule: the clock first, then the bars it closes
            clock = int(await client.hget(ws_health_key("binance"), "exchange_time_ms") or 0)
            bars = {int(t): v for t, v in (await client.hgetall(btc.sub_key)).items()}
            if T0 in updater_module.closed_times(bars, clock) and bars[T0].decode() != last:
                early_closed.append(bars[T0].decode())

        client.pipeline = lambda transaction=False: SteppingPipeline(client, look)
        await sink.flush()
        await client.aclose()

    asyncio.run(run())
    assert early_closed == [], "the clock closed minute 0 before its last update was stored"


def test_updater_moves_closed_bars_only_and_never_overwrites(settings, redis_server, market):
    client = redis_server.client()
    with connection(settings) as conn, conn.cursor() as cur:  # REST already wrote minute 1
        cur.execute(
            "INSERT INTO ohlcvs VALUES "
            "(to_timestamp(%s / 1000.0), 'binance', 'BTC', 'USDT', 1, 2, 0.5, 1.5, 9)",
            (T0 + MINUTE_MS,),
        )
        record_coverage(
            conn, [CoverageRange("binance", "BTC", "USDT", T0 + MINUTE_MS, T0 + 2 * MINUTE_MS, REST)]
        )
    store(settings, [bar(0, "37051"), bar(1, "37052"), bar(2, "37053"), bar(3, "37054")])
    updater = Updater(settings, client)
    result = updater.flush()
    assert result.rows == 3 and result.inserted == 2  # minute 3 is still open; minute 1 exists
    stored = rows(settings)
    assert stored[T0] == ("37050.01000000", "37065.0", "37049.00", "37051", "1.50")
    assert stored[T0 + MINUTE_MS] == ("1", "2", "0.5", "1.5", "9")  # REST data stays the final word
    assert set(client.hkeys(ws_sub_key("binance", "BTC", "USDT"))) == {str(T0 + 3 * MINUTE_MS).encode()}

    client.hset(
        ws_health_key("binance"), "exchange_time_ms", T0 + 5 * MINUTE_MS
    )  # the exchange's clock moved on
    assert updater.flush().rows == 1
    assert T0 + 3 * MINUTE_MS in rows(settings)
    assert client.smembers(WS_SUB_LIST) == set()

    store(settings, [bar(6, "37056")])  # a hash emptied by the updater comes back into the list
    assert client.smembers(WS_SUB_LIST) == {ws_sub_key("binance", "BTC", "USDT").encode()}


def test_a_bar_updated_between_the_read_and_the_delete_stays_and_its_minute_becomes_an_outage(
    settings, redis_server, market
):
    """The updater deletes a bar from Redis only if it still holds what was read and stored
    (compare-and-delete): an update the fetcher writes in between stays for the next flush. A live bar
    never overwrites a row, so that flush leaves the stored minute as it is and records it as an
    outage: the minute is never counted complete, and the repair fetches it over REST."""
    client = redis_server.client()
    store(settings, [bar(0, "37051"), bar(1, "37052")])  # minute 1 arrived: minute 0 is closed
    updater = Updater(settings, client)
    delete_stored = updater._delete_stored

    def update_then_delete(stored):
        store(settings, [bar(0, "37058.5")])  # a late trade of minute 0, after the updater's read
        delete_stored(stored)

    updater._delete_stored = update_then_delete
    assert updater.flush().rows == 1
    del updater._delete_stored
    sub = ws_sub_key("binance", "BTC", "USDT")
    waiting = client.hget(sub, str(T0))
    assert waiting is not None and json.loads(waiting)["close"] == "37058.5", "the update stays in Redis"

    store(settings, [bar(2, "37053")])
    updater.flush()
    assert rows(settings)[T0][3] == "37051", "a live bar never overwrites a row"
    assert set(client.hkeys(sub)) == {str(T0 + 2 * MINUTE_MS).encode()}
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT start_time, end_time, reason FROM ohlcvs_outages")
        assert cur.fetchall() == [(ms_to_datetime(T0), ms_to_datetime(T0 + MINUTE_MS), LATE_CHANGE_REASON)]

    # a minute a REST request covers is the exchange's final word: a late live bar changes nothing
    with connection(settings) as conn:
        covered = CoverageRange("binance", "BTC", "USDT", T0 + MINUTE_MS, T0 + 2 * MINUTE_MS, REST)
        record_coverage(conn, [covered])
    store(settings, [bar(1, "99999"), bar(3, "37054")])
    updater.flush()
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ohlcvs_outages")
        assert cur.fetchone()[0] == 1


def test_batches_commit_one_by_one_and_a_failure_part_way_keeps_the_rest(settings, redis_server, monkeypatch):
    markets = [Market("binance", f"C{i}", "USDT", f"C{i}USDT") for i in range(6)]
    with connection(settings) as conn:
        upsert_markets(conn, markets[:4])  # the last two are unknown to the database
    client = redis_server.client()

    async def fill() -> None:
        sink_client = async_client(settings, pack_with_hiredis=True)
        sink = RedisSink(sink_client, "binance", "shard0/1", lambda attempt: 0.01)
        for m in markets:
            keys = MarketKeys.build("binance", m.base_id, "USDT", m.symbol, settings.redis_key_delimiter)
            for minute in range(3):
                sink.add(
                    keys, WsCandle(m.symbol, T0 + minute * MINUTE_MS, "1", "2", "0.5", f"1.{minute}", "3"), 0
                )
        await sink.flush()
        await sink_client.aclose()

    asyncio.run(fill())
    client.hset(ws_health_key("binance"), "exchange_time_ms", T0 + 10 * MINUTE_MS)
    overflow = bar_json(WsCandle("C5USDT", T0, "1", "2", "0.5", "1e1000000", "3"))  # PostgreSQL refuses it
    client.hset(ws_sub_key("binance", "C5", "USDT"), str(T0), overflow)
    monkeypatch.setattr(updater_module, "ROWS_PER_BATCH", 6)  # two markets' bars per batch
    with pytest.raises(psycopg2.Error, match="overflow"):
        Updater(settings, client).flush()
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT base_id, count(*) FROM ohlcvs GROUP BY 1 ORDER BY 1")
        committed = dict(cur.fetchall())
    assert committed == {"C0": 3, "C1": 3, "C2": 3, "C3": 3}  # the batches read before the bad bar
    waiting = {m.base_id: client.hlen(ws_sub_key("binance", m.base_id, "USDT")) for m in markets}
    assert waiting == {"C0": 0, "C1": 0, "C2": 0, "C3": 0, "C4": 3, "C5": 3}  # only committed bars left

    client.hdel(ws_sub_key("binance", "C5", "USDT"), str(T0))
    result = Updater(settings, client).flush()
    assert (result.rows, result.inserted) == (5, 0)  # C4/C5 are not markets of the database: skipped
    assert client.smembers(WS_SUB_LIST) == set()


def test_an_unreadable_bar_is_moved_aside_and_the_good_ones_behind_it_are_stored(
    settings, redis_server, monkeypatch, caplog
):
    markets = [Market("binance", f"P{i}", "USDT", f"P{i}USDT") for i in range(6)]
    with connection(settings) as conn:
        upsert_markets(conn, markets)
    client = redis_server.client()
    for m in markets:
        key = ws_sub_key("binance", m.base_id, "USDT")
        for minute in range(3):
            good = WsCandle(m.symbol, T0 + minute * MINUTE_MS, "1", "2", "0.5", f"1.{minute}", "3")
            client.hset(key, str(T0 + minute * MINUTE_MS), bar_json(good))
        client.sadd(WS_SUB_LIST, key)
    bad = {  # (market, field): stored text
        ("P0", str(T0 + MINUTE_MS)): bar_json(
            WsCandle("P0USDT", T0 + MINUTE_MS, "1", "2", "0.5", "NaN!", "3")
        ),
        ("P1", str(T0)): "not a bar",
        ("P2", str(T0 + 2 * MINUTE_MS)): f'{{"time":{T0 + 2 * MINUTE_MS},"open":1}}',
        ("P3", "yesterday"): bar_json(WsCandle("P3USDT", T0, "1", "2", "0.5", "1", "3")),
        # made of number characters, refused only by PostgreSQL
        ("P4", str(T0)): bar_json(WsCandle("P4USDT", T0, "1", "2", "0.5", "1.2.3", "3")),
        ("P5", str(T0 + 2 * MINUTE_MS)): bar_json(
            WsCandle("P5USDT", T0 + 2 * MINUTE_MS, "-", "2", "1", "1", "3")
        ),
    }
    for (base, name), text in bad.items():
        client.hset(ws_sub_key("binance", base, "USDT"), name, text)
    client.hset(ws_health_key("binance"), "exchange_time_ms", T0 + 10 * MINUTE_MS)
    monkeypatch.setattr(updater_module, "ROWS_PER_BATCH", 4)  # bad bars in several batches

    with caplog.at_level("ERROR", logger="fetchers.ws.updater"):
        result = Updater(settings, client).flush()

    assert result.rows == 6 * 3 - 5  # P3's minutes are all good; its bad field is no minute
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT base_id, (extract(epoch from time) * 1000)::bigint, close::text FROM ohlcvs")
        stored = {(b, int(t)): c for b, t, c in cur.fetchall()}
    expected = {
        (m.base_id, T0 + minute * MINUTE_MS): f"1.{minute}"
        for m in markets
        for minute in range(3)
        if (m.base_id, str(T0 + minute * MINUTE_MS)) not in bad
    }
    assert stored == expected
    rejected = [json.loads(r) for r in client.lrange(WS_SUB_REJECTED, 0, -1)]
    assert {(r["key"], r["field"], r["raw"]) for r in rejected} == {
        (ws_sub_key("binance", base, "USDT"), name, text) for (base, name), text in bad.items()
    }
    assert all(r["reason"] for r in rejected)
    assert client.smembers(WS_SUB_LIST) == set()  # nothing left behind to block the next flush
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for (base, name), text in bad.items():
        assert f"{ws_sub_key('binance', base, 'USDT')} field {name}:" in logged and repr(text) in logged

    assert Updater(settings, client).flush().rows == 0  # the next flush does not trip over them


def test_a_database_outage_leaves_bars_and_outages_in_redis_until_it_is_back(settings, redis_server, market):
    client = redis_server.client()
    outage = [OutageRecord("binance", "BTC", "USDT", T0, T0 + 2 * MINUTE_MS, "connection lost: test")]
    store(settings, [bar(0, "37051"), bar(1, "37052")], outage)
    down = Updater(settings.model_copy(update={"postgres_port": 1}), client)
    with pytest.raises(Exception, match="cannot connect"):
        down.flush()
    assert client.hlen(ws_sub_key("binance", "BTC", "USDT")) == 2 and client.llen(WS_OUTAGES) == 1
    up = Updater(settings, client)
    assert up.flush().rows == 1
    store(settings, [], outage)  # recorded twice (e.g. a crash before the list was trimmed): kept once
    up.flush()
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), min(reason) FROM ohlcvs_outages")
        assert cur.fetchone() == (1, "connection lost: test")
    assert client.llen(WS_OUTAGES) == 0


def test_coverage_records_are_stored_with_their_bars_and_leave_the_list(settings, redis_server, market):
    """A connection's coverage travels behind its bars; the updater stores both in one transaction
    (the outage beside it too) and drains the list."""
    client = redis_server.client()
    covered = [CoverageRange("binance", "BTC", "USDT", T0, T0 + 2 * MINUTE_MS, WS)]
    outage = [OutageRecord("binance", "BTC", "USDT", T0 + 5 * MINUTE_MS, T0 + 6 * MINUTE_MS, "test")]
    store(settings, [bar(0, "37051"), bar(1, "37052"), bar(2, "37053"), bar(3, "37054")], covered + outage)
    result = Updater(settings, client).flush()
    assert result.rows == 3 and result.outages == 1
    assert set(rows(settings)) == {T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS}
    with connection(settings) as db:
        assert read_coverage(db, "binance")[("BTC", "USDT")][WS] == [(T0, T0 + 2 * MINUTE_MS)]
    assert client.llen(WS_OUTAGES) == 0
