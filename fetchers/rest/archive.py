"""Downloading one file of Binance's public archive: the I/O edge of an archive task.

A file is used only if its SHA-256 equals the one its `.CHECKSUM` names and its CSV reads as whole
minutes of exact decimal text (fetchers/exchanges/binance_archive.py): nothing of a file that fails
either ever reaches the database. A file that does not exist (404: not published yet, or never) is
not retried; one that failed otherwise (unreachable, slow past the timeout, a checksum that does not
match, a zip that cannot be read) is retried `archive_max_retries` times. Either way the engine then
sends the file's range to REST (`fetchers.rest.sources.rest_fallback`).

Downloads have their own concurrency limit (`archive_concurrency`) and timeout, and no share of the
exchange's REST rate budget: the archive is another service with no published weight limit.
"""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from dataclasses import dataclass

import aiohttp

from common.backoff import backoff_seconds
from common.candle import CandleBlock
from common.settings import Settings
from fetchers.exchanges.base import FetchTask
from fetchers.exchanges.binance_archive import (
    CHECKSUM_SUFFIX,
    file_name,
    file_path,
    parse_checksum,
    parse_klines_csv,
    sha256_hex,
)

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
MAX_CSV_BYTES = 64 * 2**20
"""A month of one market's minutes is about 7 MB of CSV; a member far larger is not a kline file."""


class FileMissing(Exception):
    """The archive has no such file (404)."""


@dataclass(frozen=True, slots=True)
class ArchiveOutcome:
    """The file's candles for the task's range, or why there are none (`missing`: a 404)."""

    block: CandleBlock | None
    reason: str = ""
    missing: bool = False
    attempts: int = 1


def read_zip(data: bytes) -> str:
    """The text of the one CSV in an archive zip; ValueError for anything else."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1 or not members[0].filename.endswith(".csv"):
                raise ValueError(f"expected one CSV in the zip, found {[m.filename for m in members]}")
            if members[0].file_size > MAX_CSV_BYTES:
                raise ValueError(f"the CSV is {members[0].file_size:,} bytes, too large for one period")
            return archive.read(members[0]).decode("ascii")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"unreadable zip: {error}") from None


class ArchiveClient:
    """Fetches archive tasks over one HTTP session (made by `open`, closed by `close`)."""

    def __init__(self, settings: Settings, exchange: str):
        self.base_url = settings.archive_url(exchange)
        self.exchange = exchange
        self.concurrency = settings.archive_concurrency
        self.max_retries = settings.archive_max_retries
        self.timeout_seconds = settings.archive_timeout_seconds
        self.downloads = 0
        self._limit = asyncio.Semaphore(self.concurrency)
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> ArchiveClient:
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self._http = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _get(self, url: str) -> bytes:
        assert self._http is not None
        self.downloads += 1
        async with self._http.get(url) as response:
            if response.status == 404:
                raise FileMissing(url)
            if response.status != 200:
                raise ValueError(f"HTTP {response.status} from {url}")
            return await response.read()

    async def _attempt(self, task: FetchTask) -> CandleBlock:
        path = f"{self.base_url}/{file_path(task.symbol, task.archive)}"
        name = file_name(task.symbol, task.archive)
        async with self._limit:
            checksum = parse_checksum(
                (await self._get(path + CHECKSUM_SUFFIX)).decode("ascii", "replace"), name
            )
            data = await self._get(path)
        digest = sha256_hex(data)
        if digest != checksum:
            raise ValueError(
                f"checksum mismatch: {name} has SHA-256 {digest[:16]}…, .CHECKSUM says {checksum[:16]}…"
            )
        text = read_zip(data)
        return parse_klines_csv(text, task.exchange, task.base_id, task.quote_id, task.start_ms, task.end_ms)

    async def fetch(self, task: FetchTask) -> ArchiveOutcome:
        """The task's file, verified and parsed, with retries; never raises for the file's faults."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return ArchiveOutcome(await self._attempt(task), attempts=attempt)
            except FileMissing:
                return ArchiveOutcome(
                    None, f"{file_name(task.symbol, task.archive)}: not in the archive (404)", True, attempt
                )
            except (TimeoutError, aiohttp.ClientError, ValueError) as error:
                reason = f"{file_name(task.symbol, task.archive)}: {type(error).__name__}: {error}".rstrip(
                    ": "
                )
            if attempt > self.max_retries:
                return ArchiveOutcome(None, reason, False, attempt)
            delay = backoff_seconds(attempt, BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS)
            log.warning(
                "%s archive %s; retry %d/%d in %.1fs", self.exchange, reason, attempt, self.max_retries, delay
            )
            await asyncio.sleep(delay)
