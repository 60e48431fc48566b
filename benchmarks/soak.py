"""Soak: the whole platform under every websocket fault and process kill, held against the truth.

    python -m benchmarks.soak                       # full market lists, 7 minutes of faults (~12 min)
    python -m benchmarks.soak --quick               # 30 markets per exchange, 60 s of faults
    python -m benchmarks.soak --fault-seconds 1800  # a longer soak (the schedule repeats)

Everything runs on this machine as users run it, on a throwaway PostgreSQL (durable defaults) and
Redis: `python -m simulator --markets all --speed 60`, the three websocket fetchers, the updater, a
Celery worker and Celery beat (repair every `--repair-interval` real seconds, settle
`--settle-minutes` simulated minutes), each a process of its own. A fault schedule then hits every
websocket fault on every exchange it applies to — `drop_ws`, a stall shorter than the fetchers'
silence limit and one longer, bursts of malformed frames, lost frames, lost Binance closes,
Bitfinex 20051 and 20060 maintenance, Binance `serverShutdown` — and kills each fetcher, the
updater and the worker (with its pool) with SIGKILL, restarting them a moment later as a supervisor
would. Then the faults stop and the repair runs until it is idle: its run for each exchange, planned
past the end of the faults, finds nothing to do (no unfinished repair job, no missing minute before
its horizon); bounded by `--idle-timeout`.

What is promised, and checked for 40 sampled markets per exchange (the BTC/USD-like main market
among them) against the simulator's ground truth (`GET /control/candles`):

- at every check (every ~20 s) and at the end, no minute inside `ws` coverage less outages differs
  from the truth or is missing ("claimed complete but wrong"); and, over every market, `ws` coverage
  holds no minute `/control/dropped` lists (Binance: whose closing update was withheld);
- once the repair is idle, every closed minute of the run's window equals the truth.

The simulator's clock runs 60x, so its REST windows shrink too (`--rate-window-seconds`, 3 s: the
exchanges' published budgets per 3 real seconds, as in the tests' fast preset) and its beats come
every second (the fetchers allow 4 s, so their silence limit is 8 s). It pushes at most one update
per market per real second (`--updates-per-second`, as the full-list live test does) so that two
shared cores keep up, and works out candles for REST in a process of its own
(`--compute-processes 1`), so that a repair's requests do not take the feed's core. Whether they
kept up is reported: reconnects for silence beyond those the long stalls explain, and the
simulator's own warnings that its feed fell behind (minutes then got no final update; those count
as lost frames, so the fetchers' evidence must not vouch for them). Exit code 1 if a target is
missed.
Figures go through `benchmarks.measure.report` (and so into `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg2.extensions
import redis

from benchmarks.backfill import fresh_database, platform_settings, settings_env
from benchmarks.measure import Result, cpu_seconds, machine, postgres_cpu_seconds, report
from common.candle import Market
from common.coverage import WS, read_coverage, read_outages
from common.db import connect, load_markets
from common.ranges import Range, clip, subtract
from common.redis_keys import ws_health_key
from common.settings import EXCHANGES, Settings
from common.timeutil import MINUTE_MS, ms_to_datetime
from fetchers.rest.markets import refresh_markets
from tests.support.services import PostgresServer, RedisServer
from tests.support.simulator import SimHandle, simulator_process

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "cfr_soak"
MAIN_MARKETS = {"bitfinex": ("BTC", "USD"), "binance": ("BTC", "USDT"), "bittrex": ("BTC", "USD")}
"""The market users look at first on each exchange: always among the sampled ones."""
SIM_BEATS = (
    "--bitfinex-heartbeat-seconds", "1", "--binance-ping-seconds", "1", "--bittrex-heartbeat-seconds", "1",
    "--bittrex-keepalive-seconds", "1", "--ws-connections-window-seconds", "3",
)  # fmt: skip
"""Simulator beats every real second (a simulated minute at 60x) and counts connections per 3 s."""
HEARTBEAT_SECONDS = 4.0
"""The fetchers' heartbeat setting: a socket silent for 2 x 4 s is dead, a Bitfinex channel quiet
for 1.5 x 4 s has lost its proof."""
SHORT_STALL_SECONDS = 3.0
"""Shorter than every silence limit: no reconnect notices it, only the evidence can."""
LONG_STALL_SECONDS = 12.0
"""Longer than the sockets' silence limit (8 s): the fetchers reconnect."""
MALFORMED_RATE, MALFORMED_SECONDS = 0.05, 2.0
LOST_FRAMES, LOST_CLOSES = 3, 10
MAINTENANCE_SECONDS = 5.0
RESTART_SECONDS = 3.0
"""How long a killed process stays down before its supervisor starts it again."""
CHECK_SECONDS = 20.0
STEP_SECONDS = 15.0
"""The schedule repeats when the fault time allows a step at least this often."""
OHLCV = ("open", "high", "low", "close", "volume")


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", flush=True)


def iso(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%d %H:%M")


# ----------------------------------------------------------------------------- the processes


@dataclass
class Supervisor:
    """The platform's processes, each in a session of its own (a kill takes a worker's pool with
    it), restarted `RESTART_SECONDS` after a planned kill and at once after an unplanned exit."""

    env: dict[str, str]
    logdir: Path
    commands: dict[str, list[str]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    restart_at: dict[str, float] = field(default_factory=dict)
    kills: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def add(self, name: str, *args: str) -> None:
        self.commands[name] = [sys.executable, "-m", *args]
        self.start(name)

    def start(self, name: str) -> None:
        with open(self.log_path(name), "ab") as out:
            self.procs[name] = subprocess.Popen(
                self.commands[name], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.out"

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started; it comes back after a moment."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        self.kills[name] += 1
        self.restart_at[name] = time.monotonic() + RESTART_SECONDS

    def watch(self) -> None:
        """Start again what is due; an exit nobody asked for is recorded, then restarted too."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                continue
            due = self.restart_at.pop(name, None)
            if due is None:
                tail = self.log_path(name).read_text(errors="replace").splitlines()[-3:]
                self.unexpected.append(f"{name} exited with {proc.returncode}: {' | '.join(tail)}")
                log(f"unexpected exit: {self.unexpected[-1]}")
            elif time.monotonic() < due:
                self.restart_at[name] = due
                continue
            self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ------------------------------------------------------------------------------- the truth


Values = tuple[Decimal, ...]


class Truth:
    """Final candles of the sampled markets from the control port, each minute asked once: a
    closed minute's truth never changes."""

    def __init__(self, sim: SimHandle, start_ms: int) -> None:
        self.sim = sim
        self.start_ms = start_ms
        self.rows: dict[tuple[str, str], dict[int, Values]] = {}
        self.until: dict[tuple[str, str], int] = {}

    def upto(self, exchange: str, markets: list[Market], end_ms: int) -> dict[str, dict[int, Values]]:
        """Per symbol, the truth of [start, end_ms) (only closed minutes may be asked for)."""

        def fetch(market: Market) -> None:
            key = (exchange, market.symbol)
            since = self.until.get(key, self.start_ms)
            if since < end_ms:
                found = self.rows.setdefault(key, {})
                for row in self.sim.truth(exchange, market.symbol, since, end_ms):
                    found[row["time"]] = tuple(Decimal(row[k]) for k in OHLCV)
                self.until[key] = end_ms

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fetch, markets))
        return {m.symbol: self.rows.get((exchange, m.symbol), {}) for m in markets}


@contextmanager
def snapshot(settings: Settings):
    """One read-only REPEATABLE READ transaction: coverage, outages and rows seen at one instant."""
    conn = connect(settings)
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def stored_rows(conn, exchange: str, markets: list[Market], start_ms: int, end_ms: int):
    """Per (base, quote), the stored minutes of [start_ms, end_ms)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT base_id, quote_id, (extract(epoch from time) * 1000)::bigint, open, high, low, close,"
            " volume FROM ohlcvs WHERE exchange = %s"
            " AND (base_id, quote_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
            " AND time >= to_timestamp(%s / 1000.0) AND time < to_timestamp(%s / 1000.0)",
            (exchange, [m.base_id for m in markets], [m.quote_id for m in markets], start_ms, end_ms),
        )
        found: dict[tuple[str, str], dict[int, Values]] = {}
        for base, quote, t, *values in cur.fetchall():
            found.setdefault((base, quote), {})[int(t)] = tuple(values)
        return found


def describe(values: Values | None, none: str) -> str:
    return none if values is None else "/".join(format(v, "f") for v in values)


def differing(ranges: Iterable[Range], mine: dict[int, Values], truth: dict[int, Values]) -> list[int]:
    """The minutes of `ranges` whose stored row is not the truth (missing, different or extra)."""
    return [t for start, end in ranges for t in range(start, end, MINUTE_MS) if mine.get(t) != truth.get(t)]


def difference(mine: dict[int, Values], truth: dict[int, Values], t: int) -> str:
    return f"stored {describe(mine.get(t), 'nothing')}, truth {describe(truth.get(t), 'no trades')}"


def near(ranges: Iterable[Range], t: int, minutes: int = 10) -> list[str]:
    """The ranges within `minutes` of minute `t`, as text."""
    span = minutes * MINUTE_MS
    return [f"{iso(s)}..{iso(e)}" for s, e in ranges if s <= t + span and e >= t - span]


# ------------------------------------------------------------------------------- the checks


@dataclass
class Claims:
    """One look at what `ws` coverage vouches for."""

    claimed: int = 0
    """Minutes of the sampled markets inside ws coverage less outages."""
    wrong: dict[tuple[str, int], str] = field(default_factory=dict)
    """Claimed minutes whose row is missing or differs from the truth, with what was seen."""
    withheld: dict[tuple[str, int], str] = field(default_factory=dict)
    """Minutes of any market inside ws coverage although the simulator withheld their updates."""


@dataclass
class Final:
    compared: int = 0
    missing: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)


class Soak:
    """The running platform and what the checks found."""

    def __init__(self, settings: Settings, sim: SimHandle, supervisor: Supervisor, sample_size: int) -> None:
        self.settings = settings
        self.sim = sim
        self.supervisor = supervisor
        self.redis = redis.Redis.from_url(settings.redis_url)
        with connect(settings) as conn:
            self.listed = {ex: load_markets(conn, ex) for ex in EXCHANGES}
        self.sample = {ex: sample_markets(self.listed[ex], ex, sample_size) for ex in EXCHANGES}
        self.keys = {
            ex: {listing_symbol(ex, m.symbol): (m.base_id, m.quote_id) for m in self.listed[ex]}
            for ex in EXCHANGES
        }
        """Per exchange, the market of each listing symbol (what `/control/dropped` names)."""
        self.start_ms = 0
        self.connections: dict[str, int] = {}
        """Per exchange, the fetcher's connections once all were up."""
        self.truth: Truth | None = None
        self.max_wrong = Counter()
        self.max_withheld = Counter()
        self.examples: dict[str, dict[tuple[str, int], str]] = {ex: {} for ex in EXCHANGES}
        self.checks = 0

    def pause(self, seconds: float) -> None:
        """Sleep, restarting whatever is due meanwhile."""
        self.pause_until(time.monotonic() + seconds)

    def pause_until(self, moment: float) -> None:
        while (left := moment - time.monotonic()) > 0:
            self.supervisor.watch()
            time.sleep(min(1.0, left))
        self.supervisor.watch()

    def health(self, exchange: str) -> dict[str, str]:
        found = self.redis.hgetall(ws_health_key(exchange))
        return {k.decode(): v.decode() for k, v in found.items()}

    def connected(self, exchange: str, since_ms: int) -> bool:
        h = self.health(exchange)
        up, total = int(h.get("connections_up", 0)), int(h.get("connections_total", 0))
        return int(h.get("updated_ms", 0)) > since_ms and up == total > 0

    def wait_connected(self, since_ms: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for exchange in EXCHANGES:
            while not self.connected(exchange, since_ms):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{exchange}: not every connection came up in {timeout:.0f} s")
                self.pause(1)

    def clock_ms(self) -> int:
        """The simulator's current minute: every minute before it is closed."""
        return self.sim.clock()["current_minute_ms"]

    def look(self, exchange: str) -> Claims:
        """What ws coverage claims now: every claimed minute of the sampled markets against the
        truth, and every market's coverage against the minutes the simulator withheld."""
        assert self.truth is not None
        closed = self.clock_ms()
        markets = self.sample[exchange]
        truth = self.truth.upto(exchange, markets, closed)
        dropped = self.sim.dropped(exchange, closes=exchange == "binance")
        with snapshot(self.settings) as conn:
            coverage = read_coverage(conn, exchange)
            outages = read_outages(conn, exchange)
            rows = stored_rows(conn, exchange, markets, self.start_ms, closed)
        claims = Claims()
        for symbol, minutes in dropped.items():
            ws = coverage.get(self.keys[exchange][symbol], {}).get(WS, [])
            for t in minutes:
                if any(s <= t < e for s, e in ws):
                    claims.withheld[(symbol, t)] = f"{exchange} {symbol} {iso(t)}: withheld, ws {near(ws, t)}"
        for market in markets:
            key = (market.base_id, market.quote_id)
            ws, gaps = coverage.get(key, {}).get(WS, []), outages.get(key, [])
            mine, real = rows.get(key, {}), truth[market.symbol]
            claimed = clip(subtract(ws, gaps), self.start_ms, closed)
            claims.claimed += sum(end - start for start, end in claimed) // MINUTE_MS
            for t in differing(claimed, mine, real):
                claims.wrong[(market.symbol, t)] = (
                    f"{exchange} {market.symbol} {iso(t)}: {difference(mine, real, t)}; ws {near(ws, t)}; "
                    f"outages {near(gaps, t)}"
                )
        return claims

    def check(self) -> dict[str, Claims]:
        """One look per exchange; the worst counts and the first examples are kept."""
        found = {exchange: self.look(exchange) for exchange in EXCHANGES}
        self.checks += 1
        for exchange, claims in found.items():
            self.max_wrong[exchange] = max(self.max_wrong[exchange], len(claims.wrong))
            self.max_withheld[exchange] = max(self.max_withheld[exchange], len(claims.withheld))
            kept = self.examples[exchange]
            for key, text in [*claims.wrong.items(), *claims.withheld.items()]:
                if key not in kept and len(kept) < 20:
                    kept[key] = text
                    log(f"FOUND {text}")
        log(
            "check: "
            + "; ".join(
                f"{ex} {c.claimed:,} claimed, {len(c.wrong)} wrong, {len(c.withheld)} withheld inside ws"
                for ex, c in found.items()
            )
        )
        return found

    def compare(self, exchange: str, end_ms: int) -> Final:
        """Every minute of the window [start, end_ms) of the sampled markets against the truth."""
        assert self.truth is not None
        markets = self.sample[exchange]
        truth = self.truth.upto(exchange, markets, end_ms)
        with snapshot(self.settings) as conn:
            rows = stored_rows(conn, exchange, markets, self.start_ms, end_ms)
        final = Final()
        for market in markets:
            mine, real = rows.get((market.base_id, market.quote_id), {}), truth[market.symbol]
            final.compared += (end_ms - self.start_ms) // MINUTE_MS
            for t in differing([(self.start_ms, end_ms)], mine, real):
                if t in mine:
                    final.wrong += 1
                else:
                    final.missing += 1
                if len(final.examples) < 10:
                    final.examples.append(f"{exchange} {market.symbol} {iso(t)}: {difference(mine, real, t)}")
        return final


def listing_symbol(exchange: str, symbol: str) -> str:
    """How the simulator's control port names a market: Bitfinex's `tBTCUSD` is `BTCUSD` there."""
    return symbol[1:] if exchange == "bitfinex" else symbol


def sample_markets(listed: list[Market], exchange: str, size: int) -> list[Market]:
    """`size` trading markets, the main one first, the rest drawn with a fixed seed."""
    trading = [m for m in listed if m.is_trading]
    base, quote = MAIN_MARKETS[exchange]
    main = next((m for m in trading if (m.base_id, m.quote_id) == (base, quote)), None)
    main = main or next((m for m in trading if m.base_id == base), trading[0])
    others = [m for m in trading if m is not main]
    return [main, *random.Random(f"soak|{exchange}").sample(others, min(size - 1, len(others)))]


# -------------------------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Step:
    what: str
    target: str
    act: Callable[[Soak], None]


def fault(exchange: str, **settings) -> Callable[[Soak], None]:
    return lambda soak: soak.sim.set_faults(exchange, **settings)


def lasting(exchange: str, seconds: float, on: dict, off: dict) -> Callable[[Soak], None]:
    """A settable fault held for `seconds`, then cleared."""

    def act(soak: Soak) -> None:
        soak.sim.set_faults(exchange, **on)
        soak.pause(seconds)
        soak.sim.set_faults(exchange, **off)

    return act


def kill(name: str) -> Callable[[Soak], None]:
    return lambda soak: soak.supervisor.kill(name)


def stall(exchange: str, seconds: float) -> Callable[[Soak], None]:
    return lasting(exchange, seconds, {"ws_stall": True}, {"ws_stall": False})


def malformed(exchange: str) -> Callable[[Soak], None]:
    return lasting(
        exchange, MALFORMED_SECONDS, {"ws_malformed_rate": MALFORMED_RATE}, {"ws_malformed_rate": 0}
    )


def fault_steps() -> list[Step]:
    """Every websocket fault on every exchange it applies to, and a SIGKILL of every process that
    holds live or repair state; kills spread between the faults."""
    each: list[tuple[str, Callable[[str], Callable[[Soak], None]]]] = [
        ("drop_ws", lambda ex: fault(ex, drop_ws=True)),
        (f"ws_stall {SHORT_STALL_SECONDS:g} s", lambda ex: stall(ex, SHORT_STALL_SECONDS)),
        (f"ws_malformed_rate {MALFORMED_RATE:g} for {MALFORMED_SECONDS:g} s", malformed),
        (f"lose_ws_frames {LOST_FRAMES}", lambda ex: fault(ex, lose_ws_frames=LOST_FRAMES)),
    ]
    steps = [Step(what, exchange, make(exchange)) for what, make in each for exchange in EXCHANGES]
    steps += [
        Step(f"lose_ws_closes {LOST_CLOSES}", "binance", fault("binance", lose_ws_closes=LOST_CLOSES)),
        Step("ws_info 20051", "bitfinex", fault("bitfinex", ws_info=20051)),
        Step("server_shutdown", "binance", fault("binance", server_shutdown=True)),
        Step(
            f"ws_info 20060 ({MAINTENANCE_SECONDS:g} s)",
            "bitfinex",
            fault("bitfinex", ws_info=20060, maintenance_seconds=MAINTENANCE_SECONDS),
        ),
    ]
    steps += [
        Step(f"ws_stall {LONG_STALL_SECONDS:g} s", ex, stall(ex, LONG_STALL_SECONDS)) for ex in EXCHANGES
    ]
    kills = [Step("kill -9", f"fetch-{exchange}", kill(f"fetch-{exchange}")) for exchange in EXCHANGES]
    kills[1:1] = [Step("kill -9", "updater", kill("updater")), Step("kill -9", "worker", kill("worker"))]
    every = len(steps) // len(kills) + 1
    for index, step in enumerate(kills):
        steps.insert(every * index + every - 1, step)
    return steps


def run_schedule(soak: Soak, steps: list[Step], seconds: float, began: float) -> int:
    """The steps spread evenly over `seconds` (repeated while a round fits `STEP_SECONDS` each);
    returns how many ran."""
    rounds = max(1, int(seconds // (len(steps) * STEP_SECONDS)))
    plan = steps * rounds
    spacing = seconds / len(plan)
    start = time.monotonic()
    for index, step in enumerate(plan):
        soak.pause_until(start + index * spacing)
        log(f"[{time.monotonic() - began:4.0f} s] {step.what} on {step.target}")
        step.act(soak)
    soak.pause_until(start + seconds)
    return len(plan)


class Checker(threading.Thread):
    """`Soak.check` every `CHECK_SECONDS` while the faults run (its own thread: the schedule sleeps)."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(daemon=True)
        self.soak = soak
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.stopping.wait(CHECK_SECONDS):
            try:
                self.soak.check()
            except Exception as error:  # noqa: BLE001 - reported by the main thread
                self.error = error
                log(f"check failed: {error!r}")

    def stop(self) -> None:
        self.stopping.set()
        self.join()


# -------------------------------------------------------------------------------- the repair


def repair_records(path: Path) -> list[tuple[str, dict]]:
    """The worker's repair runs in order: ("planned" | "ended", the run's record)."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(errors="replace").splitlines():
        for kind in ("planned", "ended"):
            _, marker, record = line.partition(f"repair run {kind}: ")
            if marker:
                try:
                    runs.append((kind, json.loads(record)))
                except ValueError:
                    pass  # a line cut by a kill
    return runs


@dataclass
class Idle:
    seconds: float
    until_ms: int
    missing_minutes: int


def idle_run(records: list[tuple[str, dict]], exchange: str, after_ms: int) -> dict | None:
    """The first run of `exchange` planned up to `after_ms` or later that found no unfinished job
    and nothing to plan."""
    return next(
        (
            run
            for kind, run in records
            if kind == "planned" and run["exchange"] == exchange
            and run["job"] is None and (run["until_ms"] or 0) >= after_ms
        ),
        None,
    )  # fmt: skip


def wait_repair_idle(soak: Soak, after_ms: int, timeout: float) -> dict[str, Idle]:
    """Per exchange, when (real seconds from now) its repair became idle past `after_ms`."""
    began = time.monotonic()
    idle: dict[str, Idle] = {}
    path = soak.supervisor.log_path("worker")
    while len(idle) < len(EXCHANGES) and time.monotonic() - began < timeout:
        records = repair_records(path)
        for exchange in EXCHANGES:
            run = None if exchange in idle else idle_run(records, exchange, after_ms)
            if run is not None:
                idle[exchange] = Idle(time.monotonic() - began, run["until_ms"], run["missing_minutes"] or 0)
                log(f"{exchange}: repair idle after {idle[exchange].seconds:.0f} s: {json.dumps(run)}")
        soak.pause(1)
    return idle


def repair_failures(records: list[tuple[str, dict]], exchange: str) -> tuple[int, int, int]:
    """(runs that ended, requests done, requests failed) of `exchange`'s repair runs."""
    ended = [run for kind, run in records if kind == "ended" and run["exchange"] == exchange]
    return len(ended), sum(run.get("done", 0) for run in ended), sum(run.get("failed", 0) for run in ended)


def outage_counts(settings: Settings, exchange: str) -> tuple[int, Counter]:
    """Outage rows of `exchange` (every market) and how many per reason (numbers left out)."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT reason FROM ohlcvs_outages WHERE exchange = %s", (exchange,))
        reasons = [row[0] for row in cur.fetchall()]
    kinds = Counter("".join(c for c in reason if not c.isdigit()).strip()[:80] for reason in reasons)
    return len(reasons), kinds


def failed_requests(settings: Settings, exchange: str) -> int:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ohlcvs_errors WHERE exchange = %s", (exchange,))
        return cur.fetchone()[0]


def silence_reconnects(soak: Soak, exchange: str, long_stalls: int) -> tuple[int, int]:
    """(reconnects of `exchange` for silence, how many the scheduled long stalls explain: one per
    connection each). More means the machine did not keep up: sockets went quiet on their own."""
    lines = soak.supervisor.log_path(f"fetch-{exchange}").read_text(errors="replace").splitlines()
    silent = sum("silent for" in line and "reconnecting in" in line for line in lines)
    return silent, soak.connections[exchange] * long_stalls


def simulator_behind(path: Path) -> list[str]:
    """The simulator's warnings that its live feed fell so far behind that minutes got no final."""
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if "fell" in line]


# ---------------------------------------------------------------------------------- the run


@dataclass
class Options:
    markets: str
    sample: int
    speed: float
    fault_seconds: float
    repair_interval: float
    settle_minutes: int
    rate_window: float
    updates_per_second: float
    idle_timeout: float
    keep_logs: bool


def simulator_flags(options: Options) -> list[str]:
    window = str(options.rate_window)
    return [
        "--markets", options.markets, "--speed", str(options.speed), "--rate-window-seconds", window,
        "--bitfinex-block-seconds", window, "--binance-ban-seconds", window,
        "--max-updates-per-real-second", str(options.updates_per_second), "--compute-processes", "1",
        *SIM_BEATS,
    ]  # fmt: skip


def live_platform_settings(
    pg: PostgresServer,
    rd: RedisServer,
    sim: SimHandle,
    logdir: Path,
    rate_window: float,
    database: str = DATABASE,
    **extra,
) -> Settings:
    """The whole platform pointed at the simulator and the throwaway servers, in a fresh database,
    with the simulator's budget window and beats and fast reconnects; `extra` settings on top."""
    return fresh_database(
        pg,
        database,
        lambda db: platform_settings(
            pg, rd, sim, db,
            log_dir=logdir,
            rest_rate_window_seconds=rate_window,
            updater_flush_seconds=0.5,
            ws_connect_window_seconds=3.0,
            bitfinex_ws_heartbeat_seconds=HEARTBEAT_SECONDS,
            binance_ws_heartbeat_seconds=HEARTBEAT_SECONDS,
            bittrex_ws_heartbeat_seconds=HEARTBEAT_SECONDS,
            ws_backoff_base_seconds=0.1,
            ws_backoff_max_seconds=1.0,
            **extra,
        ),
    )  # fmt: skip


def soak_settings(pg: PostgresServer, rd: RedisServer, sim: SimHandle, options: Options, logdir: Path):
    """The live platform with a repair that runs often with a short settle time."""
    return live_platform_settings(
        pg,
        rd,
        sim,
        logdir,
        options.rate_window,
        repair_interval_seconds=options.repair_interval,
        repair_settle_minutes=options.settle_minutes,
    )


def start_platform(supervisor: Supervisor, logdir: Path, web: bool = False) -> None:
    """The Procfile's processes less Flower: fetchers, updater, worker, beat, and the web if asked."""
    for exchange in EXCHANGES:
        supervisor.add(f"fetch-{exchange}", "scripts.fetchers.ws", "fetch", "--exchange", exchange)
    supervisor.add("updater", "scripts.fetchers.ws", "update")
    queues = ",".join(f"{exchange}_rest" for exchange in EXCHANGES)
    celery = ("celery", "-A", "celery_app.celery_main")
    supervisor.add(
        "worker", *celery, "worker", "-Q", queues, "--concurrency", str(len(EXCHANGES)), "--loglevel", "INFO"
    )
    supervisor.add("beat", *celery, "beat", "-s", str(logdir / "beat-schedule"), "--loglevel", "INFO")
    if web:
        supervisor.add("web", "web")


@dataclass
class Outcome:
    finals: dict[str, Final]
    end_claims: dict[str, Claims]
    idle: dict[str, Idle]
    outages: dict[str, tuple[int, Counter]]
    repairs: dict[str, tuple[int, int, int]]
    errors: dict[str, int]
    window_ends: dict[str, int]
    """Per exchange, the end of the minutes compared: its idle repair's horizon, or the faults' end."""
    silences: dict[str, tuple[int, int]]
    behind: list[str]
    cpu: str
    steps: int


def soak_run(options: Options, pg: PostgresServer, rd: RedisServer, logdir: Path) -> tuple[Soak, Outcome]:
    with simulator_process(*simulator_flags(options), log_path=logdir / "simulator.err") as sim:
        settings = soak_settings(pg, rd, sim, options, logdir)
        for exchange in EXCHANGES:
            asyncio.run(refresh_markets(settings, exchange))
        supervisor = Supervisor({**settings_env(settings), "PYTHONUNBUFFERED": "1"}, logdir)
        soak = Soak(settings, sim, supervisor, options.sample)
        counts = ", ".join(f"{ex} {sum(m.is_trading for m in soak.listed[ex]):,}" for ex in EXCHANGES)
        log(f"trading markets: {counts}; sampled {options.sample} per exchange; logs in {logdir}")
        try:
            started_ms = int(time.time() * 1000)
            start_platform(supervisor, logdir)
            soak.wait_connected(started_ms)
            soak.connections = {ex: int(soak.health(ex)["connections_total"]) for ex in EXCHANGES}
            soak.start_ms = soak.clock_ms() + MINUTE_MS
            soak.truth = Truth(sim, soak.start_ms)
            log(f"every connection up; the window starts at {iso(soak.start_ms)} (simulated)")
            soak.pause(10)
            return soak, faults_then_repair(soak, options, pg, sim)
        finally:
            supervisor.stop_all()


def faults_then_repair(soak: Soak, options: Options, pg: PostgresServer, sim: SimHandle) -> Outcome:
    checker = Checker(soak)
    checker.start()
    began = time.monotonic()
    cpu_before = (cpu_seconds(sim.pid), postgres_cpu_seconds(pg.port))
    try:
        steps = run_schedule(soak, fault_steps(), options.fault_seconds, began)
    finally:
        sim.reset_faults()
    faults_end_ms = soak.clock_ms() + MINUTE_MS
    seconds = time.monotonic() - began
    cpu = (
        f"simulator {(cpu_seconds(sim.pid) - cpu_before[0]) / seconds:.0%}, PostgreSQL "
        f"{(postgres_cpu_seconds(pg.port) - cpu_before[1]) / seconds:.0%} of one core; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    log(f"faults over at {iso(faults_end_ms)} (simulated); {cpu}; waiting for the repair to be idle")
    soak.wait_connected(int(time.time() * 1000) - 5000)
    idle = wait_repair_idle(soak, faults_end_ms, options.idle_timeout)
    checker.stop()
    if checker.error is not None:
        raise checker.error
    end_claims = soak.check()
    ends = {ex: idle[ex].until_ms if ex in idle else faults_end_ms for ex in EXCHANGES}
    finals = {exchange: soak.compare(exchange, ends[exchange]) for exchange in EXCHANGES}
    records = repair_records(soak.supervisor.log_path("worker"))
    long_stalls = steps // len(fault_steps())
    return Outcome(
        finals=finals,
        end_claims=end_claims,
        idle=idle,
        outages={ex: outage_counts(soak.settings, ex) for ex in EXCHANGES},
        repairs={ex: repair_failures(records, ex) for ex in EXCHANGES},
        errors={ex: failed_requests(soak.settings, ex) for ex in EXCHANGES},
        window_ends=ends,
        silences={ex: silence_reconnects(soak, ex, long_stalls) for ex in EXCHANGES},
        behind=simulator_behind(soak.supervisor.logdir / "simulator.err"),
        cpu=cpu,
        steps=steps,
    )


# ---------------------------------------------------------------------------------- the table


def exchange_table(soak: Soak, outcome: Outcome, timeout: float) -> str:
    """One column per exchange: the figures the soak answers for."""
    rows: list[tuple[str, ...]] = [("", *EXCHANGES)]

    def line(label: str, cell: Callable[[str], str]) -> None:
        rows.append((label, *(cell(ex) for ex in EXCHANGES)))

    line("minutes compared (sampled markets)", lambda ex: f"{outcome.finals[ex].compared:,}")
    line("missing after the repair", lambda ex: f"{outcome.finals[ex].missing:,}")
    line("wrong after the repair", lambda ex: f"{outcome.finals[ex].wrong:,}")
    line(
        "claimed complete but wrong: max / end",
        lambda ex: f"{soak.max_wrong[ex]} / {len(outcome.end_claims[ex].wrong)}",
    )
    line("ws-claimed minutes at the end", lambda ex: f"{outcome.end_claims[ex].claimed:,}")
    line(
        "withheld yet ws-covered (all markets): max / end",
        lambda ex: f"{soak.max_withheld[ex]} / {len(outcome.end_claims[ex].withheld)}",
    )
    line("outages recorded (all markets)", lambda ex: f"{outcome.outages[ex][0]:,}")
    line("silence reconnects (long stalls explain)", lambda ex: "{} ({})".format(*outcome.silences[ex]))
    line("repair runs ended / requests / failed", lambda ex: "{} / {:,} / {}".format(*outcome.repairs[ex]))
    line(
        "repair time to idle",
        lambda ex: f"{outcome.idle[ex].seconds:.0f} s" if ex in outcome.idle else f"not in {timeout:.0f} s",
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def results(soak: Soak, outcome: Outcome, timeout: float) -> list[Result]:
    """The report's rows: per exchange the promises with their targets, then the run's conditions."""
    rows = []
    for ex in EXCHANGES:
        final, end = outcome.finals[ex], outcome.end_claims[ex]
        rows.append(
            Result(
                f"{ex}: minutes compared / missing / wrong once the repair is idle",
                f"{final.compared:,} / {final.missing} / {final.wrong}",
                "0 missing, 0 wrong",
                final.missing == 0 and final.wrong == 0 and final.compared > 0,
            )
        )
        rows.append(
            Result(
                f"{ex}: claimed complete but wrong, max during the run / at the end",
                f"{soak.max_wrong[ex]} / {len(end.wrong)}",
                "0 / 0",
                soak.max_wrong[ex] == 0 and not end.wrong,
            )
        )
        rows.append(
            Result(
                f"{ex}: minutes withheld by a fault yet inside ws coverage, max / at the end",
                f"{soak.max_withheld[ex]} / {len(end.withheld)}",
                "0 / 0",
                soak.max_withheld[ex] == 0 and not end.withheld,
            )
        )
        runs, done, failed = outcome.repairs[ex]
        idle = outcome.idle.get(ex)
        rows.append(
            Result(
                f"{ex}: outages recorded; repair runs / requests / failed (errors stored); time to idle",
                f"{outcome.outages[ex][0]:,}; {runs} / {done:,} / {failed} ({outcome.errors[ex]}); "
                + (f"{idle.seconds:.0f} s" if idle else "not idle"),
                f"0 failed, idle within {timeout:.0f} s",
                idle is not None and idle.missing_minutes == 0 and failed == 0 and outcome.errors[ex] == 0,
            )
        )
    kills = soak.supervisor.kills
    rows.append(
        Result(
            "kill -9 and restarts: fetchers / updater / worker; unexpected exits",
            f"{sum(kills[f'fetch-{ex}'] for ex in EXCHANGES)} / {kills['updater']} / {kills['worker']}; "
            f"{len(soak.supervisor.unexpected)}",
            "0 unexpected",
            not soak.supervisor.unexpected,
        )
    )
    beyond = [max(0, silent - explained) for silent, explained in (outcome.silences[ex] for ex in EXCHANGES)]
    rows.append(
        Result(
            "machine kept up: silence reconnects beyond the long stalls; simulator feed fell behind",
            f"{' / '.join(map(str, beyond))} ({' / '.join(EXCHANGES)}); {len(outcome.behind)} times",
        )
    )
    rows.append(Result("fault phase CPU", outcome.cpu))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 markets per exchange, 60 s of faults")
    parser.add_argument("--markets", help="simulator markets per exchange, or 'all' (default: all)")
    parser.add_argument("--sample", type=int, help="markets compared per exchange (default: 40)")
    parser.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    parser.add_argument("--fault-seconds", type=float, help="real seconds of faults (default: 420)")
    parser.add_argument("--repair-interval", type=float, default=20.0, help="REPAIR_INTERVAL_SECONDS")
    parser.add_argument("--settle-minutes", type=int, default=10, help="REPAIR_SETTLE_MINUTES")
    parser.add_argument("--rate-window-seconds", type=float, default=3.0, help="REST budget window")
    parser.add_argument(
        "--updates-per-second", type=float, default=1.0, help="simulator updates per market per real second"
    )
    parser.add_argument("--idle-timeout", type=float, default=600.0, help="real seconds for the repair")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()
    options = Options(
        markets=args.markets or ("30" if args.quick else "all"),
        sample=args.sample or (10 if args.quick else 40),
        speed=args.speed,
        fault_seconds=args.fault_seconds or (60.0 if args.quick else 420.0),
        repair_interval=args.repair_interval,
        settle_minutes=args.settle_minutes,
        rate_window=args.rate_window_seconds,
        updates_per_second=args.updates_per_second,
        idle_timeout=args.idle_timeout,
        keep_logs=args.keep_logs,
    )
    logdir = Path(tempfile.mkdtemp(prefix="cfr-soak-"))
    pg = PostgresServer(durable=True).start()
    rd = RedisServer().start()
    try:
        soak, outcome = soak_run(options, pg, rd, logdir)
    finally:
        rd.stop()
        pg.stop()
    return summarise(soak, outcome, options, logdir)


def summarise(soak: Soak, outcome: Outcome, options: Options, logdir: Path) -> int:
    """Print the findings and the table, report the rows; keep the logs when a target is missed."""
    start, end = soak.start_ms, min(outcome.window_ends.values())
    print(f"\nSoak, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(
        f"simulator --markets {options.markets} --speed {options.speed:g}; {outcome.steps} fault steps in "
        f"{options.fault_seconds:.0f} s; repair every {options.repair_interval:g} s, settle "
        f"{options.settle_minutes} min; window {iso(start)} .. {iso(end)} (simulated, "
        f"{(end - start) // MINUTE_MS} minutes); {soak.checks} checks"
    )
    for exchange in EXCHANGES:
        kinds = outcome.outages[exchange][1]
        print(f"{exchange} outage reasons: " + "; ".join(f"{n} x {k}" for k, n in kinds.most_common(8)))
        for text in [*soak.examples[exchange].values(), *outcome.finals[exchange].examples]:
            print(f"  {text}")
    for line in soak.supervisor.unexpected:
        print(f"unexpected exit: {line}")
    for line in outcome.behind:
        print(f"simulator: {line}")
    print()
    print(exchange_table(soak, outcome, options.idle_timeout))
    rows = results(soak, outcome, options.idle_timeout)
    report("soak (python -m benchmarks.soak)", rows)
    missed = any(row.met is False for row in rows)
    if missed or options.keep_logs:
        print(f"\nthe processes' logs are kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
