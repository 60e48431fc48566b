"""Binance's public data archive (data.binance.vision) for the simulator's Binance markets.

Served on the Binance port under the real paths, so `BINANCE_ARCHIVE_URL` is the Binance REST URL:

    GET /data/spot/monthly/klines/{SYMBOL}/1m/{SYMBOL}-1m-{YYYY-MM}.zip[.CHECKSUM]
    GET /data/spot/daily/klines/{SYMBOL}/1m/{SYMBOL}-1m-{YYYY-MM-DD}.zip[.CHECKSUM]

Promises: a file exists for every closed month and closed day (by the simulated clock) that holds
simulated history, and for no other period (404, as the archive answers); it is a zip of one CSV
with no header, the REST kline's twelve columns and the same decimal text (`binance_kline_row`),
open and close times in milliseconds before 2025-01-01 and in microseconds from then on; the
`.CHECKSUM` is `<sha256>  <name>.zip`. Requests here use no REST weight and are not counted as
REST replies.

Faults (simulator/faults.py): `archive_missing_rate` — share of files that do not exist (the same
files every time, zip and checksum alike); `archive_checksum_rate` — share of files replaced with
other data (a valid zip with one value changed) while their `.CHECKSUM` still names the original,
every time; `archive_truncate_rate` — share of zip downloads cut in half; `archive_slow_rate` —
share of zip downloads trickled out over `http_hang_seconds`. Every file request is logged with
what was done to it (`GET /control/served`).
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import io
import re
import zipfile
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from simulator.compute import CandleWork
from simulator.core import MINUTE_MS, SimMarket
from simulator.wire import binance_kline_row

if TYPE_CHECKING:
    from simulator.state import SimState

EXCHANGE = "binance"
MICROSECONDS_FROM_MS = 1_735_689_600_000
"""2025-01-01: from this open time on, the archive writes times in microseconds."""
NAME_RE = re.compile(r"^([A-Z0-9]{1,20})-1m-(\d{4}-\d{2}(?:-\d{2})?)\.zip(\.CHECKSUM)?$")
SLOW_CHUNKS = 20
DAY_MS = 86_400_000
ZIP_MEMBER_TIME = (2020, 1, 1, 0, 0, 0)
"""The time every served zip gives its member (a fixed one keeps the bytes reproducible)."""


def csv_line(row: list[Any]) -> str:
    """One archive CSV line from a REST kline row: µs times from 2025 on."""
    if row[0] >= MICROSECONDS_FROM_MS:
        row = [row[0] * 1000, *row[1:6], row[6] * 1000 + 999, *row[7:]]
    return ",".join(str(value) for value in row)


def zip_of(name: str, text: str) -> bytes:
    """The zip of one CSV member; the same bytes whenever and wherever it is built (the member's
    time is fixed), so a file and its CHECKSUM never depend on the moment it was asked for."""
    member = zipfile.ZipInfo(name[: -len(".zip")] + ".csv", date_time=ZIP_MEMBER_TIME)
    member.compress_type = zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, text, compresslevel=1)
    return buffer.getvalue()


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) in ms of `YYYY-MM` or `YYYY-MM-DD`; ValueError for a date that does not exist."""
    parts = [int(p) for p in period.split("-")]
    start = datetime(parts[0], parts[1], parts[2] if len(parts) == 3 else 1, tzinfo=UTC)
    days = 1 if len(parts) == 3 else calendar.monthrange(parts[0], parts[1])[1]
    start_ms = int(start.timestamp()) * 1000
    return start_ms, start_ms + days * DAY_MS


def stable_share(seed: int, name: str, kind: str) -> float:
    """A number in [0, 1) fixed by the file's name: a fault rate picks the same files every time."""
    digest = hashlib.blake2b(f"{seed}|{kind}|{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class ArchiveFiles:
    """The zip (and its SHA-256) of each period, built once and kept while memory allows."""

    def __init__(self, sim: SimState, cache_bytes: int) -> None:
        self.sim = sim
        self.cache_bytes = cache_bytes
        self._cached: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._building: dict[str, asyncio.Future] = {}

    async def get(
        self, market: SimMarket, name: str, start_ms: int, end_ms: int, altered: bool = False
    ) -> tuple[bytes, str]:
        """(zip bytes, sha256 hex); `altered`: the file with one value changed (its own digest)."""
        key = f"{name}|{altered}"
        found = self._cached.get(key)
        if found is not None:
            self._cached.move_to_end(key)
            return found
        pending = self._building.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._building[key] = future
        try:
            data = await self.sim.compute(archive_file, market.symbol, name, start_ms, end_ms, altered)
            found = (data, hashlib.sha256(data).hexdigest())
            future.set_result(found)
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            del self._building[key]
        self._cached[key] = found
        self._size += len(found[0])
        while self._size > self.cache_bytes and len(self._cached) > 1:
            _, (old, _) = self._cached.popitem(last=False)
            self._size -= len(old)
        return found


class BinanceArchiveServer:
    port = EXCHANGE
    actions: tuple[str, ...] = ()

    def __init__(self, sim: SimState) -> None:
        self.sim = sim
        self.markets: dict[str, SimMarket] = {m.symbol: m for m in sim.markets[EXCHANGE]}
        self.files = ArchiveFiles(sim, sim.config.archive_cache_mb * 2**20)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/data/spot/{kind}/klines/{symbol}/1m/{name}", self.file)

    async def action(self, name: str, args: dict[str, Any]) -> None:
        raise ValueError(f"the binance archive has no action {name!r}")

    def _exists(self, kind: str, symbol: str, name: str) -> tuple[SimMarket, str, int, int] | None:
        match = NAME_RE.match(name)
        if match is None or match.group(1) != symbol or symbol not in self.markets:
            return None
        period = match.group(2)
        if kind != ("monthly" if len(period) == 7 else "daily"):
            return None
        try:
            start_ms, end_ms = period_bounds(period)
        except ValueError:
            return None
        history = self.sim.history
        today = history.now_minute() - history.now_minute() % DAY_MS
        if end_ms > today or end_ms <= history.first_ms:
            return None
        return self.markets[symbol], period, start_ms, end_ms

    def _log(self, request: web.Request, status: int, fault: str | None) -> None:
        self.sim.stats.served.archive.append({"path": request.path, "status": status, "fault": fault})
        self.sim.stats[EXCHANGE].archive_requests += 1

    async def file(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        found = self._exists(info["kind"], info["symbol"], info["name"])
        faults = self.sim.faults[EXCHANGE]
        seed = self.sim.config.seed
        zip_name = info["name"].removesuffix(".CHECKSUM")
        if found is not None and stable_share(seed, zip_name, "missing") < faults.archive_missing_rate:
            self._log(request, 404, "missing")
            found = None
        elif found is None:
            self._log(request, 404, None)
        if found is None:
            return web.Response(
                status=404, text="<Error><Code>NoSuchKey</Code></Error>", content_type="text/xml"
            )
        market, _, start_ms, end_ms = found
        data, digest = await self.files.get(market, zip_name, start_ms, end_ms)
        if info["name"].endswith(".CHECKSUM"):
            self._log(request, 200, None)
            return web.Response(text=f"{digest}  {zip_name}\n", content_type="text/plain")
        fault = None
        if stable_share(seed, zip_name, "checksum") < faults.archive_checksum_rate:
            data, _ = await self.files.get(market, zip_name, start_ms, end_ms, altered=True)
            fault = "checksum"
        elif faults.archive_truncate():
            data = data[: len(data) // 2]
            fault = "truncate"
        elif faults.archive_slow():
            fault = "slow"
        self._log(request, 200, fault)
        if fault != "slow":
            return web.Response(body=data, content_type="application/zip")
        response = web.StreamResponse(headers={"Content-Type": "application/zip"})
        response.content_length = len(data)
        await response.prepare(request)
        step = max(1, -(-len(data) // SLOW_CHUNKS))
        try:
            for offset in range(0, len(data), step):
                await asyncio.sleep(self.sim.config.http_hang_seconds / SLOW_CHUNKS)
                await response.write(data[offset : offset + step])
            await response.write_eof()
        except ConnectionError:  # the client gave up waiting: what a slow file is for
            pass
        return response


def archive_file(
    work: CandleWork, symbol: str, name: str, start_ms: int, end_ms: int, altered: bool
) -> bytes:
    """The zip of the minute klines of [start_ms, end_ms) (a compute job); `altered`: with one
    value changed, as a file that does not match its CHECKSUM."""
    history = work.history
    lo = max(start_ms, history.first_ms)
    bars = history.interval_candles(
        work.market(EXCHANGE, symbol), MINUTE_MS, lo, end_ms - MINUTE_MS, include_current=False
    )
    rows = [binance_kline_row(bar, MINUTE_MS) for bar in bars]
    if altered and rows:
        rows[0][4] = rows[0][4][:-1] + ("1" if rows[0][4][-1] != "1" else "2")
    return zip_of(name, "".join(csv_line(row) + "\n" for row in rows))
