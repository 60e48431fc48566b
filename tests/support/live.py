"""Helpers for the live-pipeline tests: run fetchers and the updater as users do (subprocesses),
wait for what a test means, and compare `ohlcvs` with the simulator's ground truth.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis

from common.db import connection
from common.exchanges import EXCHANGES
from common.redis_keys import WS_UPDATER_HEALTH, ws_health_key
from common.settings import Settings
from common.timeutil import MINUTE_MS, datetime_to_ms
from fetchers.rest.markets import refresh_markets
from tests.conftest import service_env
from tests.support.services import wait_for
from tests.support.simulator import SimHandle

ROOT = Path(__file__).resolve().parents[2]
FAST_HEARTBEATS = (
    "--bitfinex-heartbeat-seconds",
    "1",
    "--binance-ping-seconds",
    "1",
    "--bittrex-heartbeat-seconds",
    "1",
    "--bittrex-keepalive-seconds",
    "1",
    "--ws-connections-window-seconds",
    "3",
)
"""Simulator flags: beat every second and count connections per 3 s, as the live tests' fetchers
are told (`LiveStack.env`)."""


def refresh_all_markets(settings: Settings, exchanges: Iterable[str] = EXCHANGES) -> None:
    for exchange in exchanges:
        asyncio.run(refresh_markets(settings, exchange))


@dataclass
class LiveStack:
    """Fetcher and updater processes pointed at one simulator, one database and one Redis."""

    settings: Settings
    sim: SimHandle
    logdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_ms: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "REDIS_"))}
        env.update(service_env(self.settings))
        env.update(self.sim.env())
        env.update(
            UPDATER_FLUSH_SECONDS="0.5",
            WS_CONNECT_WINDOW_SECONDS="3",
            # the simulators in these tests beat every second; allow for a busy machine
            BITFINEX_WS_HEARTBEAT_SECONDS="4",
            BINANCE_WS_HEARTBEAT_SECONDS="4",
            BITTREX_WS_HEARTBEAT_SECONDS="4",
            WS_BACKOFF_BASE_SECONDS="0.1",
            WS_BACKOFF_MAX_SECONDS="1",
            LOG_DIR=str(self.logdir),
        )
        env.update(self.extra_env)
        return env

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.out", "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.fetchers.ws", *args],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def fetch(self, exchange: str, *args: str) -> subprocess.Popen:
        self.started_ms[exchange] = int(time.time() * 1000)
        return self.start(exchange, "fetch", "--exchange", exchange, *args)

    def update(self) -> subprocess.Popen:
        return self.start("updater", "update")

    def start_all(self, exchanges: Iterable[str]) -> int:
        """Fetchers for `exchanges` and the updater; returns the first simulated minute that began
        with every connection up (where comparisons with the truth can start)."""
        exchanges = list(exchanges)
        for exchange in exchanges:
            self.fetch(exchange)
        self.update()
        for exchange in exchanges:
            self.wait_connected(exchange)
        return self.sim.clock()["current_minute_ms"] + MINUTE_MS

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, name: str) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{name} did not stop on SIGTERM") from None

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.kill()
            proc.wait()

    def output(self, name: str) -> str:
        path = self.logdir / f"{name}.out"
        return path.read_text() if path.exists() else ""

    # ---- Redis views

    def redis(self) -> redis.Redis:
        s = self.settings
        return redis.Redis(host=s.redis_host, port=s.redis_port, password=s.redis_password.get_secret_value())

    def health(self, exchange: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis().hgetall(ws_health_key(exchange)).items()}

    def exchange_clock(self, exchange: str) -> int:
        return int(self.health(exchange).get("exchange_time_ms", 0))

    def flushes(self) -> int:
        value = self.redis().hget(WS_UPDATER_HEALTH, "last_flush_ms")
        return int(value) if value else 0

    def wait_connected(self, exchange: str, timeout: float = 60) -> None:
        def up() -> bool:
            h = self.health(exchange)
            return (
                int(h.get("updated_ms", 0)) > self.started_ms.get(exchange, 0)
                and h.get("connections_up") == h.get("connections_total")
                and int(h.get("connections_up", 0)) > 0
            )

        wait_for(up, timeout, f"all {exchange} connections up")

    def wait_clock_past(self, exchange: str, time_ms: int, timeout: float = 120) -> None:
        wait_for(
            lambda: self.exchange_clock(exchange) >= time_ms, timeout, f"{exchange} clock past {time_ms}"
        )

    def wait_flushed(self, exchanges: Iterable[str], timeout: float = 120) -> int:
        """Returns B: every closed bar before B (on every exchange given) is now in the database,
        and every outage before it is recorded."""
        exchanges = list(exchanges)
        for exchange in exchanges:
            wait_for(
                lambda ex=exchange: self.health(ex).get("open_outages") == "0", timeout, f"{exchange} whole"
            )
        bound = min(self.exchange_clock(ex) for ex in exchanges) - 2 * MINUTE_MS + MINUTE_MS
        seen = self.flushes()
        wait_for(lambda: self.flushes() > seen, timeout, "an updater flush")
        seen = self.flushes()
        wait_for(lambda: self.flushes() > seen, timeout, "a second updater flush")
        return bound - bound % MINUTE_MS


# ---- ground truth


@dataclass(frozen=True)
class Outage:
    start_ms: int
    end_ms: int
    reason: str


def outages(settings: Settings, exchange: str) -> dict[tuple[str, str], list[Outage]]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT base_id, quote_id, start_time, end_time, reason FROM ohlcvs_outages WHERE exchange = %s",
            (exchange,),
        )
        found: dict[tuple[str, str], list[Outage]] = {}
        for base, quote, start, end, reason in cur.fetchall():
            found.setdefault((base, quote), []).append(
                Outage(datetime_to_ms(start), datetime_to_ms(end), reason)
            )
        return found


def db_bars(
    settings: Settings, exchange: str, start_ms: int, end_ms: int
) -> dict[tuple[str, str, int], tuple]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT base_id, quote_id, (extract(epoch from time) * 1000)::bigint, open, high, low, close, "
            "volume FROM ohlcvs WHERE exchange = %s "
            "AND time >= to_timestamp(%s / 1000.0) AND time < to_timestamp(%s / 1000.0)",
            (exchange, start_ms, end_ms),
        )
        return {(b, q, int(t)): tuple(Decimal(v) for v in rest) for b, q, t, *rest in cur.fetchall()}


def mismatches(
    settings: Settings,
    sim: SimHandle,
    exchange: str,
    markets: Iterable[Any],
    start_ms: int,
    end_ms: int,
    repaired: bool = False,
) -> list[str]:
    """Every difference between `ohlcvs` and the truth in [start_ms, end_ms): missing minutes, extra
    minutes, different values. Before the repair, minutes inside recorded outages are excused (the
    live feed said it could not vouch for them); once the repair has run (`repaired`), none is."""
    stored: dict[tuple[str, str], dict[int, tuple]] = {}
    for (base, quote, t), values in db_bars(settings, exchange, start_ms, end_ms).items():
        stored.setdefault((base, quote), {})[t] = values
    known_outages = {} if repaired else outages(settings, exchange)
    markets = list(markets)
    with ThreadPoolExecutor(8) as pool:
        rows = pool.map(lambda m: sim.truth(exchange, m.symbol, start_ms, end_ms), markets)
        truths = {m.symbol: r for m, r in zip(markets, rows, strict=True)}
    problems: list[str] = []
    for market in markets:
        gaps = known_outages.get((market.base_id, market.quote_id), [])

        def excused(t: int, gaps=gaps) -> bool:
            return any(g.start_ms <= t < g.end_ms for g in gaps)

        truth = {
            row["time"]: tuple(Decimal(row[k]) for k in ("open", "high", "low", "close", "volume"))
            for row in truths[market.symbol]
        }
        mine = stored.get((market.base_id, market.quote_id), {})
        for t in sorted(set(truth) | set(mine)):
            if excused(t) or truth.get(t) == mine.get(t):
                continue
            what = "missing" if t not in mine else "extra" if t not in truth else f"{mine[t]} != {truth[t]}"
            problems.append(f"{exchange} {market.symbol} {t}: {what}")
    return problems


def outage_share(
    settings: Settings, exchange: str, markets: Iterable[Any], start_ms: int, end_ms: int
) -> float:
    """The fraction of market-minutes in [start_ms, end_ms) inside a recorded outage."""
    markets = list(markets)
    found = outages(settings, exchange)
    covered = 0
    for market in markets:
        minutes = set()
        for gap in found.get((market.base_id, market.quote_id), []):
            first = max(gap.start_ms, start_ms)
            minutes.update(range(first - first % MINUTE_MS, min(gap.end_ms, end_ms), MINUTE_MS))
        covered += len(minutes)
    return covered / max(1, len(markets) * ((end_ms - start_ms) // MINUTE_MS))


def coverage_mismatches(
    settings: Settings, sim: SimHandle, exchange: str, markets: Iterable[Any]
) -> tuple[list[str], int]:
    """Every difference between `ohlcvs` and the truth inside the minutes `ohlcvs_coverage` vouches
    for (websocket coverage less outages and failed requests, plus REST coverage), and how many
    market-minutes that is."""
    from common.completeness import MarketEvidence, covered_ranges
    from common.coverage import REST, WS, read_coverage, read_failed_requests, read_outages

    with connection(settings) as conn:
        coverage = read_coverage(conn, exchange)
        outs = read_outages(conn, exchange)
        failed = read_failed_requests(conn, exchange)
    problems: list[str] = []
    minutes = 0
    for market in markets:
        key = (market.base_id, market.quote_id)
        if key not in coverage:
            continue
        evidence = MarketEvidence(
            rest=coverage[key][REST],
            ws=coverage[key][WS],
            outages=outs.get(key, []),
            failed=failed.get(key, []),
        )
        for start_ms, end_ms in covered_ranges(evidence):
            minutes += (end_ms - start_ms) // MINUTE_MS
            truth = {
                row["time"]: tuple(Decimal(row[k]) for k in ("open", "high", "low", "close", "volume"))
                for row in sim.truth(exchange, market.symbol, start_ms, end_ms)
            }
            mine = {
                t: values
                for (base, quote, t), values in db_bars(settings, exchange, start_ms, end_ms).items()
                if (base, quote) == key
            }
            for t in sorted(set(truth) | set(mine)):
                if truth.get(t) != mine.get(t):
                    what = "missing" if t not in mine else "extra" if t not in truth else "different"
                    problems.append(f"{exchange} {market.symbol} {t}: {what} inside coverage")
    return problems, minutes
