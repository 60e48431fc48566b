"""Export bars of an exchange's markets to a Parquet or CSV file, streamed from PostgreSQL.

    python -m scripts.export --exchange binance --symbols BTC/USDT,ETH/USDT --interval 1h \
        --start 2024-01-01 --end 2025-01-01 --format parquet --output btc-eth-2024.parquet

The range is half-open [start, end) over bar open times; times without a zone are UTC and must be
on a whole minute. `--interval` is one of the API's (1m 5m 15m 30m 1h 3h 6h 12h 1D 7D 14D 1M; 1d,
7d, 14d are accepted for the days, 1M is a month): 1m reads `ohlcvs`, the others the summary levels,
with the same SQL as `GET /api/ohlcvs` (`common.levels`); a rolled-up bar (3h, 14D, 1M) holds only
the source bars before --end, as a page of the API does up to its `end`. `--symbols` takes BASE/QUOTE
or the exchange's own symbol, as `fetch` does. Rows come market by market, oldest bar first, as
`exchange, base_id, quote_id, time, open, high, low, close, volume`.

Prices and volumes stay exact: Parquet columns are decimal128 with the precision and scale the
values of the range need, CSV holds each NUMERIC's own text (time as `2024-01-01 00:00:00+00`). A
value that decimal128 cannot hold (more than 38 digits) stops a Parquet export with one line (CSV
can hold it). Nothing is loaded whole: PostgreSQL streams the rows with COPY, each market's range
in `SLICES` consecutive pieces over as many connections that share one read-only snapshot; CSV
passes them through in chunks; for Parquet they are measured as they come and kept
in an Arrow file on disk beside the output, then written as row groups of `ROW_GROUP_ROWS` once
the decimal widths are known. The file appears under its name only when it is complete.
Progress goes to stderr.

Exit codes: 0 written; 1 a service failed or a value does not fit Parquet's decimal128; 2 bad input
(unknown exchange, symbol, interval or format, an unreadable date, a bound off a whole minute, end
not after start, an output folder that does not exist), with one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import click

from common.candle import MarketKey
from common.exchanges import EXCHANGES
from common.levels import INTERVALS, BarQuery, Interval, bar_query_values, bar_rows_sql, numbered
from common.settings import Settings, load_settings_or_exit
from common.timeutil import datetime_to_ms, ms_to_datetime
from scripts.cli import EXIT_FAILED, EXIT_USAGE, fail
from scripts.fetchers.rest import exchange_or_exit, parse_time, split_symbols

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

FORMATS = ("parquet", "csv")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
COLUMNS = ("exchange", "base_id", "quote_id", "time", *VALUE_COLUMNS)
MAX_PRECISION = 38
"""Digits a Parquet decimal128 holds."""
BATCH_BYTES = 2 << 20
"""PostgreSQL's text handed on at once (about 27,000 minutes). A Parquet export holds a few batches
per connection at once (arriving, queued, converted), whatever the range."""
ROW_GROUP_ROWS = 131_072
"""Rows a Parquet row group gathers from consecutive batches: what readers like, a few MB."""
SLICES = 2
"""Connections that read one market's range at once, each a consecutive piece of it, all in one
snapshot: PostgreSQL renders a backend's rows on one core, and rendering NUMERIC text is most of an
export's work."""
DAY_ALIASES = {"1d": "1D", "7d": "7D", "14d": "14D"}

_PARQUET_SELECT = (
    "SELECT (date_part('epoch', t) * 1000)::bigint, open, high, low, close, volume FROM ({rows}) AS s"
)
# The time as timestamptz's own text in UTC (`2024-01-01 00:00:00+00`, ISO 8601 with a space, as
# psql shows it): to_char's `T...Z` would cost PostgreSQL more than every other column together.
_CSV_SELECT = (
    "SELECT %(exchange)s, %(base_id)s, %(quote_id)s, t, open, high, low, close, volume FROM ({rows}) AS s"
)
_SESSION = {"application_name": "coin-for-rich export", "TimeZone": "UTC", "DateStyle": "ISO, YMD"}


class ExportError(RuntimeError):
    """The export cannot be written as asked; the message says why and what to do, in one line."""


@dataclass
class DecimalShape:
    """How wide one value column's decimal type must be: digits before the point and after it."""

    integer_digits: int = 1
    scale: int = 0

    def widen(self, texts) -> DecimalShape:
        """Widen to hold every value of `texts` (a pyarrow string array of PostgreSQL's NUMERIC
        text: `-12.340`, `0.5`, `7`; never an exponent), counted in bulk by pyarrow; returns the
        shape of `texts` alone."""
        import pyarrow.compute as pc

        if not len(texts):
            return DecimalShape()
        length = pc.binary_length(texts)
        point = pc.find_substring(texts, ".")
        has_point = pc.greater_equal(point, 0)
        scale = pc.if_else(has_point, pc.subtract(pc.subtract(length, point), 1), 0)
        before = pc.subtract(
            pc.if_else(has_point, point, length), pc.cast(pc.starts_with(texts, "-"), "int32")
        )
        own = DecimalShape(max(1, pc.max(before).as_py()), pc.max(scale).as_py())
        self.scale = max(self.scale, own.scale)
        self.integer_digits = max(self.integer_digits, own.integer_digits)
        return own

    @property
    def precision(self) -> int:
        return self.integer_digits + self.scale


@dataclass
class ExportPlan:
    """What an export writes: the markets in order, the bars' window, and once read, how many bars
    and the values' shapes."""

    markets: list[MarketKey]
    interval: Interval
    start_ms: int
    end_ms: int
    rows: int = 0
    shapes: dict[str, DecimalShape] = field(
        default_factory=lambda: {c: DecimalShape() for c in VALUE_COLUMNS}
    )

    def query(self, market: MarketKey, start_ms: int, end_ms: int) -> BarQuery:
        """The bars of `market` opening in [start_ms, end_ms)."""
        return BarQuery(market, self.interval, start_ms, end_ms - 1, None)

    def slices(self, count: int) -> list[tuple[int, int]]:
        """[start, end) cut at bar open times into at most `count` consecutive pieces of about equal
        length; the bars of the pieces, one after the other, are the bars of the whole range."""
        bounds = [self.start_ms]
        for k in range(1, count):
            cut = self.interval.bucket_start(self.start_ms + (self.end_ms - self.start_ms) * k // count)
            if bounds[-1] < cut < self.end_ms:
                bounds.append(cut)
        bounds.append(self.end_ms)
        return list(pairwise(bounds))


def interval_or_exit(name: str) -> Interval:
    interval = INTERVALS.get(DAY_ALIASES.get(name, name))
    if interval is None:
        fail(
            f"unknown interval {name!r}; choose one of {' '.join(INTERVALS)} (1m is a minute, 1M a month)",
            EXIT_USAGE,
        )
    return interval


def resolve_markets(conn: PgConnection, exchange: str, symbols: Sequence[str]) -> list[MarketKey]:
    """The markets named as BASE/QUOTE or exchange symbols (as `fetch` takes them), in the order
    given, each once. UnknownSymbolError (one line) for a name the exchange's `symbol_exchange`
    lacks."""
    from common.db import load_markets
    from fetchers.exchanges.base import UnknownSymbolError, resolve_symbol

    known = load_markets(conn, exchange)
    if not known:
        raise UnknownSymbolError(
            f"no {exchange} markets in this database (symbol_exchange is empty for it); "
            f"backfill some first: python -m scripts.fetchers.rest markets --exchange {exchange}"
        )
    chosen: list[MarketKey] = []
    for text in symbols:
        market = resolve_symbol(known, text)
        key = MarketKey(market.exchange, market.base_id, market.quote_id)
        if key not in chosen:
            chosen.append(key)
    return chosen


def check_decimal128(plan: ExportPlan) -> None:
    """ExportError when a column needs more digits than Parquet's decimal128 holds."""
    for column, shape in plan.shapes.items():
        if shape.precision > MAX_PRECISION:
            raise ExportError(
                f"{column} needs {shape.precision} significant digits ({shape.integer_digits} before the "
                f"point, {shape.scale} after) and Parquet's decimal128 holds {MAX_PRECISION}; export "
                "this range with --format csv, which keeps every value's exact text"
            )


class Progress:
    """Bars read so far on stderr: one line redrawn on a terminal, else a line every few seconds;
    quiet for an export that ends within a moment."""

    def __init__(self, markets: int, stream=None):
        self.markets = markets
        self.market = 0
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.began = self.last = time.monotonic()
        self.shown = False

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= (0.5 if self.tty else 5.0):
            self.last = now
            self.shown = True
            self.stream.write(("\r" if self.tty else "") + self.line() + ("" if self.tty else "\n"))
            self.stream.flush()

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self.began, 1e-9)
        return f"read {self.done:,} bars (market {self.market} of {self.markets}), {rate:,.0f} bars/s"

    def finish(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


class _LineBatches:
    """Where COPY's output goes: asyncpg hands over whatever arrived (rows cut anywhere), which is
    passed on in batches of whole lines of about `BATCH_BYTES`."""

    def __init__(self, flush: Callable[[bytes, int], None]):
        self.flush_batch = flush
        self.parts: list[bytes] = []
        self.size = 0

    async def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= BATCH_BYTES:
            joined = b"".join(self.parts)
            cut = joined.rfind(b"\n") + 1
            self.parts, self.size = [joined[cut:]], len(joined) - cut
            self._flush(joined[:cut])

    def flush(self) -> None:
        joined = b"".join(self.parts)
        self.parts, self.size = [], 0
        self._flush(joined)

    def _flush(self, lines: bytes) -> None:
        if lines:
            self.flush_batch(lines, lines.count(b"\n"))


async def _copy(
    conn, template: str, plan: ExportPlan, market: MarketKey, piece: tuple[int, int], sink: _LineBatches
) -> None:
    """Every row of `template` (a SELECT over the level's rows) for one market and piece of the
    range, through `sink`."""
    query = numbered(template.format(rows=bar_rows_sql(plan.interval, newest_first=False)))
    arguments = query.arguments(bar_query_values(plan.query(market, *piece)))
    await conn.copy_from_query(query.text, *arguments, output=sink.write, format="csv")
    sink.flush()


def parquet_schema(plan: ExportPlan):
    import pyarrow as pa

    fields = [pa.field(name, pa.string(), nullable=False) for name in ("exchange", "base_id", "quote_id")]
    fields.append(pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False))
    fields += [
        pa.field(c, pa.decimal128(plan.shapes[c].precision, plan.shapes[c].scale), nullable=False)
        for c in VALUE_COLUMNS
    ]
    metadata = {
        "coin_for_rich.interval": plan.interval.name,
        "coin_for_rich.start": ms_to_datetime(plan.start_ms).isoformat(),
        "coin_for_rich.end": ms_to_datetime(plan.end_ms).isoformat(),
    }
    return pa.schema(fields, metadata=metadata)


class _Spool:
    """Batches of bars as PostgreSQL's text, parsed, measured and made decimal on a thread of their
    own while COPY goes on, and kept in an Arrow file on disk until every value's shape is known.

    A Parquet file has one schema, so the decimal128 width must be known before its first row
    group; measuring the text on the way saves PostgreSQL a second pass over the range (which cost
    it as much as the COPY). Each batch is converted at its own scale (decimal128(38, its scale),
    kept as the 16-byte values), so what is left once the widths are known is a cheap rescale.
    pyarrow works in C++ without holding the GIL, so this runs beside asyncpg reading the rows."""

    def __init__(self, path: Path, plan: ExportPlan, progress: Progress):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        self.path = path
        self.plan = plan
        self.progress = progress
        self.batches_read: list[tuple[tuple[int, int], tuple[int, ...]]] = []  # (market, piece), scales
        self.read_options = pacsv.ReadOptions(column_names=["time", *VALUE_COLUMNS])
        self.convert_options = pacsv.ConvertOptions(
            column_types={"time": pa.int64(), **{c: pa.string() for c in VALUE_COLUMNS}},
            null_values=[],
            strings_can_be_null=False,
        )
        self.schema = pa.schema([("time", pa.int64()), *((c, pa.binary(16)) for c in VALUE_COLUMNS)])
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.file = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_file(self.file, self.schema)
        self.thread = threading.Thread(target=self._work, name="export-spool", daemon=True)
        self.thread.start()

    def add(self, data: bytes, rows: int, key: tuple[int, int]) -> None:
        """A batch of lines of piece `key` = (market index, piece index) of the export."""
        self.queue.put((data, rows, key))
        self.progress.add(rows)

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so COPY is never left blocked on a full queue
            try:
                self._spool(*item)
            except BaseException as error:  # noqa: BLE001 - raised again in the exporting thread
                self.error = error

    def _spool(self, data: bytes, rows: int, key: tuple[int, int]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(
            io.BytesIO(data), read_options=self.read_options, convert_options=self.convert_options
        )
        self.plan.rows += rows
        columns = [table.column("time").combine_chunks()]
        scales = []
        for name in VALUE_COLUMNS:
            texts = table.column(name).combine_chunks()
            shape = self.plan.shapes[name].widen(texts)
            if shape.precision > MAX_PRECISION:
                return  # check_decimal128 tells the user; nothing of this batch is needed
            try:
                values = texts.cast(pa.decimal128(MAX_PRECISION, shape.scale))
            except pa.ArrowInvalid as error:  # NaN or Infinity, which only a hand-made row can hold
                market = self.plan.markets[key[0]]
                raise ExportError(
                    f"{market.exchange} {market.base_id}/{market.quote_id}: {name} holds a value that is "
                    f"not a decimal number ({error}); export it with --format csv"
                ) from None
            columns.append(pa.Array.from_buffers(pa.binary(16), len(values), values.buffers(), values.offset))
            scales.append(shape.scale)
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self.batches_read.append((key, tuple(scales)))

    def close(self) -> None:
        """Wait for every batch; raise what the thread met."""
        self.queue.put(None)
        self.thread.join()
        self.writer.close()
        self.file.close()
        if self.error is not None:
            raise self.error

    def batches(self):
        """(market index, time, the value columns as decimal128 at their batch's scale) market by
        market and piece by piece, one batch in memory at a time (the pieces' batches arrived
        interleaved; the Arrow file reads any batch on its own)."""
        import pyarrow as pa

        order = sorted(range(len(self.batches_read)), key=lambda i: (self.batches_read[i][0], i))
        with pa.OSFile(str(self.path), "rb") as source:
            reader = pa.ipc.open_file(source)
            for i in order:
                (market, _), scales = self.batches_read[i]
                batch = reader.get_batch(i)
                values = []
                for name, scale in zip(VALUE_COLUMNS, scales, strict=True):
                    raw = batch.column(name)
                    kind = pa.decimal128(MAX_PRECISION, scale)
                    values.append(pa.Array.from_buffers(kind, len(raw), raw.buffers(), raw.offset))
                yield market, batch.column("time"), values


async def write_parquet(conns: list, plan: ExportPlan, path: Path, progress: Progress) -> int:
    """Every bar of the plan into a Parquet file at `path`, one row group per batch. PostgreSQL
    streams each NUMERIC as its text; `_Spool` parses, measures and converts it; then each batch's
    columns are rescaled to the file's decimal128 types in bulk (pyarrow refuses a cast that would
    round or overflow). zstd, and dictionaries only for the market columns: dictionary-encoding
    prices tripled the time a row group took to write and made the file larger."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spool = _Spool(path.with_name(path.name + ".spool"), plan, progress)
    try:
        try:
            for index, market in enumerate(plan.markets):
                progress.market = index + 1
                await asyncio.gather(
                    *(
                        _copy(
                            conn,
                            _PARQUET_SELECT,
                            plan,
                            market,
                            piece,
                            _LineBatches(_to_spool(spool, (index, k))),
                        )
                        for k, (conn, piece) in enumerate(zip(conns, plan.slices(len(conns)), strict=False))
                    )
                )
        finally:
            spool.close()
        check_decimal128(plan)
        schema = parquet_schema(plan)
        with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=list(COLUMNS[:3])) as writer:
            pending: list = []
            for index, times, values in spool.batches():
                market = plan.markets[index]
                columns = [pa.repeat(value, len(times)) for value in market]
                columns.append(times.cast(pa.timestamp("ms", tz="UTC")))
                columns += [
                    array.cast(schema.field(c).type) for c, array in zip(VALUE_COLUMNS, values, strict=True)
                ]
                pending.append(pa.Table.from_arrays(columns, schema=schema))
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                    _write_row_group(writer, pending)
                    pending = []
            if pending:
                _write_row_group(writer, pending)
    finally:
        spool.path.unlink(missing_ok=True)
    return plan.rows


def _write_row_group(writer, tables: list) -> None:
    import pyarrow as pa

    table = pa.concat_tables(tables)
    writer.write_table(table, row_group_size=table.num_rows)


def _to_spool(spool: _Spool, key: tuple[int, int]) -> Callable[[bytes, int], None]:
    def flush(data: bytes, count: int) -> None:
        spool.add(data, count, key)

    return flush


async def write_csv(conns: list, plan: ExportPlan, path: Path, progress: Progress) -> int:
    """Every bar of the plan into a CSV file at `path`: a header, then PostgreSQL's own CSV rows
    (each NUMERIC's exact text, time in UTC), passed through in batches. The first piece of each
    market's range goes straight into the file, the others into files beside it that are appended
    in order once the market is read."""
    with open(path, "wb") as handle:
        handle.write((",".join(COLUMNS) + "\n").encode())
        for index, market in enumerate(plan.markets):
            progress.market = index + 1
            pieces = list(zip(conns, plan.slices(len(conns)), strict=False))
            later = [path.with_name(f"{path.name}.piece{k}") for k in range(1, len(pieces))]
            try:
                with contextlib.ExitStack() as files:
                    targets = [handle, *(files.enter_context(open(name, "wb")) for name in later)]
                    await asyncio.gather(
                        *(
                            _copy(
                                conn,
                                _CSV_SELECT,
                                plan,
                                market,
                                piece,
                                _LineBatches(_to_file(target, plan, progress)),
                            )
                            for (conn, piece), target in zip(pieces, targets, strict=True)
                        )
                    )
                for name in later:
                    with open(name, "rb") as source:
                        shutil.copyfileobj(source, handle, 1 << 20)
            finally:
                for name in later:
                    name.unlink(missing_ok=True)
    return plan.rows


def _to_file(target, plan: ExportPlan, progress: Progress) -> Callable[[bytes, int], None]:
    def flush(data: bytes, count: int) -> None:
        target.write(data)
        plan.rows += count
        progress.add(count)

    return flush


WRITERS = {"parquet": write_parquet, "csv": write_csv}


def export(
    settings: Settings,
    markets: list[MarketKey],
    interval: Interval,
    start_ms: int,
    end_ms: int,
    fmt: str,
    output: Path,
) -> ExportPlan:
    """Write an export in one read-only snapshot (several markets are read as of one moment); the
    file is written beside `output` and renamed to it once complete, so a failed export leaves no
    partial file behind.

    The rows come over asyncpg, `SLICES` connections at once: its COPY hands over what arrived in
    large pieces, where psycopg2's calls Python once per row (which, not PostgreSQL, was what
    limited a Parquet export), and each connection's backend renders its own rows' text."""
    return asyncio.run(_export(settings, ExportPlan(markets, interval, start_ms, end_ms), fmt, output))


async def _export(settings: Settings, plan: ExportPlan, fmt: str, output: Path) -> ExportPlan:
    import asyncpg

    conns = []
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        for _ in range(SLICES):
            conns.append(
                await asyncpg.connect(
                    host=settings.postgres_host,
                    port=settings.postgres_port,
                    user=settings.postgres_user,
                    password=settings.postgres_password.get_secret_value() or None,
                    database=settings.postgres_db,
                    timeout=10,
                    server_settings=_SESSION,
                )
            )
        await _share_one_snapshot(conns)
        progress = Progress(len(plan.markets))
        await WRITERS[fmt](conns, plan, partial, progress)
        progress.finish()
        os.replace(partial, output)
        return plan
    finally:
        partial.unlink(missing_ok=True)
        for conn in conns:
            await _close(conn)


async def _close(conn) -> None:
    """Close a connection (its read-only transaction ends with it); one still busy with a COPY
    that failed beside another is dropped instead of waited for."""
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:  # noqa: BLE001 - whatever the state, the connection goes
        conn.terminate()


_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


async def _share_one_snapshot(conns: list) -> None:
    """A read-only REPEATABLE READ transaction on each connection, all seeing the first one's
    snapshot (`pg_export_snapshot`): every piece of every market is read as of one moment."""
    first, *others = conns
    await first.transaction(isolation="repeatable_read", readonly=True).start()
    snapshot = await first.fetchval("SELECT pg_export_snapshot()")
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ExportError(
            f"PostgreSQL named its snapshot {snapshot!r}, which SET TRANSACTION SNAPSHOT cannot take"
        )
    for other in others:
        await other.transaction(isolation="repeatable_read", readonly=True).start()
        await other.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")


def use_jemalloc() -> None:
    """pyarrow's jemalloc pool for this process where the wheel has it: it hands the batches'
    memory back as they pass, where the default pool (mimalloc) kept about 50 MB more at the end of a
    year than at its start (benchmarks/export.py)."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:
        pass


@click.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
@click.option("--symbols", required=True, help="comma-separated BASE/QUOTE or exchange symbols")
@click.option("--interval", default="1m", show_default=True, help=f"one of {' '.join(INTERVALS)}")
@click.option("--start", required=True, help="ISO date/time on a whole minute, UTC if no zone (inclusive)")
@click.option("--end", required=True, help="ISO date/time on a whole minute, UTC if no zone (exclusive)")
@click.option("--format", "fmt", default="parquet", show_default=True, help="parquet or csv")
@click.option("--output", required=True, help="the file to write (replaced if it exists)")
def main(exchange: str, symbols: str, interval: str, start: str, end: str, fmt: str, output: str) -> None:
    """Export the bars of some markets of one exchange over [start, end) to a Parquet or CSV file."""
    import asyncpg
    import psycopg2

    from common.db import DatabaseError, connection
    from fetchers.exchanges.base import UnknownSymbolError
    from fetchers.rest.jobs import BackfillRequestError, validate_range

    settings = load_settings_or_exit()
    exchange = exchange_or_exit(exchange)
    chosen_interval = interval_or_exit(interval)
    if fmt == "parquet":
        use_jemalloc()
    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r}; choose parquet or csv", EXIT_USAGE)
    start_at, end_at = parse_time(start, "--start"), parse_time(end, "--end")
    try:
        validate_range(start_at, end_at, None)
    except BackfillRequestError as error:
        fail(str(error), EXIT_USAGE)
    names = split_symbols(symbols)
    if not names:
        fail("--symbols: name at least one market (BASE/QUOTE or the exchange's symbol)", EXIT_USAGE)
    path = Path(output)
    if not path.parent.is_dir():
        fail(f"--output: the folder {str(path.parent)!r} does not exist", EXIT_USAGE)

    began = time.monotonic()
    try:
        with connection(settings) as conn:
            markets = resolve_markets(conn, exchange, names)
    except UnknownSymbolError as error:
        fail(str(error), EXIT_USAGE)
    except DatabaseError as error:
        fail(str(error))
    except psycopg2.errors.UndefinedTable:
        fail("the database has no coin-for-rich schema yet; create it with: python -m scripts.database init")
    except psycopg2.Error as error:
        fail(f"database error: {str(error).strip().splitlines()[0]}")
    try:
        plan = export(
            settings, markets, chosen_interval, datetime_to_ms(start_at), datetime_to_ms(end_at), fmt, path
        )
    except ExportError as error:
        fail(str(error), EXIT_FAILED)
    except asyncpg.PostgresError as error:
        fail(f"database error: {str(error).strip().splitlines()[0]}")
    except (OSError, asyncpg.InterfaceError) as error:
        fail(f"export failed: {error}")
    seconds = time.monotonic() - began
    if not plan.rows:
        click.echo(
            f"warning: no {chosen_interval.name} bars of these markets in [{start_at.isoformat()}, "
            f"{end_at.isoformat()}); the file holds no rows",
            err=True,
        )
    click.echo(
        f"{plan.rows:,} {chosen_interval.name} bars of {len(plan.markets)} market(s) written to {output} "
        f"({fmt}, {path.stat().st_size:,} bytes) in {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
