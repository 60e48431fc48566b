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
values of the range need (found by a first pass in SQL, over the same snapshot as the rows), CSV
holds each NUMERIC's own text. A value that decimal128 cannot hold (more than 38 digits) stops the
export with one line (CSV can hold it). Nothing is loaded whole: PostgreSQL streams the rows with
COPY, and they leave in row groups (Parquet) or chunks (CSV) of `BATCH_ROWS`; the file appears
under its name only when it is complete. Progress goes to stderr.

Exit codes: 0 written; 1 a service failed or a value does not fit Parquet's decimal128; 2 bad input
(unknown exchange, symbol, interval or format, an unreadable date, a bound off a whole minute, end
not after start, an output folder that does not exist), with one line.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from common.candle import MarketKey
from common.exchanges import EXCHANGES
from common.levels import INTERVALS, BarQuery, Interval, bar_query_values, bar_rows_sql
from common.settings import load_settings_or_exit
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
BATCH_ROWS = 131_072
"""Rows per Parquet row group / CSV write: a few MB in memory, whatever the range."""
DAY_ALIASES = {"1d": "1D", "7d": "7D", "14d": "14D"}

_SHAPE_SQL = (
    "SELECT count(*), "
    + ", ".join(f"max(scale({c})), max(abs({c}))" for c in VALUE_COLUMNS)
    + " FROM ({rows}) AS s"
)
_COUNT_SQL = "SELECT count(*) FROM ({rows}) AS s"
_TIME_MS = "(date_part('epoch', t) * 1000)::bigint"
_TIME_ISO = """to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
_PARQUET_COPY = (
    "COPY (SELECT " + _TIME_MS + ", open, high, low, close, volume FROM ({rows}) AS s) TO STDOUT (FORMAT csv)"
)
_CSV_COPY = (
    "COPY (SELECT %(exchange)s, %(base_id)s, %(quote_id)s, "
    + _TIME_ISO
    + ", open, high, low, close, volume FROM ({rows}) AS s) TO STDOUT (FORMAT csv)"
)


class ExportError(RuntimeError):
    """The export cannot be written as asked; the message says why and what to do, in one line."""


@dataclass
class DecimalShape:
    """How wide one value column's decimal type must be: digits before the point and after it."""

    integer_digits: int = 1
    scale: int = 0

    def widen(self, scale: int | None, max_abs: Decimal | None) -> None:
        if scale is not None:
            self.scale = max(self.scale, scale)
        if max_abs is not None and max_abs >= 1:
            self.integer_digits = max(self.integer_digits, max_abs.adjusted() + 1)

    @property
    def precision(self) -> int:
        return self.integer_digits + self.scale


@dataclass
class ExportPlan:
    """What an export writes: the markets in order, the bars' window and the values' shapes."""

    markets: list[MarketKey]
    interval: Interval
    start_ms: int
    end_ms: int
    rows: int = 0
    shapes: dict[str, DecimalShape] = field(
        default_factory=lambda: {c: DecimalShape() for c in VALUE_COLUMNS}
    )

    def query(self, market: MarketKey) -> BarQuery:
        return BarQuery(market, self.interval, self.start_ms, self.end_ms - 1, None)


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


def plan_export(
    conn: PgConnection,
    markets: list[MarketKey],
    interval: Interval,
    start_ms: int,
    end_ms: int,
    decimal_shapes: bool = True,
) -> ExportPlan:
    """Count the bars (for the progress line) and, with `decimal_shapes`, find per value column the
    widest decimal any of them needs: the first pass. Run it in the same REPEATABLE READ transaction
    as the writing pass, so both see the same rows."""
    plan = ExportPlan(markets, interval, start_ms, end_ms)
    template = _SHAPE_SQL if decimal_shapes else _COUNT_SQL
    statement = template.format(rows=bar_rows_sql(interval, newest_first=False))
    with conn.cursor() as cur:
        for market in markets:
            cur.execute(statement, bar_query_values(plan.query(market)))
            count, *extremes = cur.fetchone()
            plan.rows += count
            for index, column in enumerate(VALUE_COLUMNS if decimal_shapes else ()):
                plan.shapes[column].widen(extremes[2 * index], extremes[2 * index + 1])
    return plan


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
    """Bars written so far on stderr: one line redrawn on a terminal, else a line every few seconds;
    quiet for an export that ends within a moment."""

    def __init__(self, total: int, stream=None):
        self.total = total
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
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        rate = self.done / max(time.monotonic() - self.began, 1e-9)
        return f"exported {self.done:,} of {self.total:,} bars{share}, {rate:,.0f} bars/s"

    def finish(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


class _RowBatches:
    """The file object psycopg2's COPY writes into: it hands over one row per call, which are passed
    on in batches of `BATCH_ROWS` (one Python call per row, no per-value objects)."""

    def __init__(self, flush: Callable[[bytes, int], None]):
        self.flush_batch = flush
        self.rows: list[bytes] = []

    def write(self, row: bytes) -> None:
        self.rows.append(row)
        if len(self.rows) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.flush_batch(b"".join(self.rows), len(self.rows))
            self.rows = []


def _copy(conn: PgConnection, template: str, plan: ExportPlan, market: MarketKey, sink: _RowBatches) -> None:
    statement = template.format(rows=bar_rows_sql(plan.interval, newest_first=False))
    with conn.cursor() as cur:
        cur.copy_expert(cur.mogrify(statement, bar_query_values(plan.query(market))), sink)
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


def write_parquet(conn: PgConnection, plan: ExportPlan, path: Path, progress: Progress) -> int:
    """Every bar of the plan into a Parquet file at `path`, one row group per batch. PostgreSQL
    writes each NUMERIC as its text; pyarrow's CSV reader turns a whole batch into decimal128
    columns in C++ (refusing, never rounding, a value with more decimals than the column's scale)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    check_decimal128(plan)
    schema = parquet_schema(plan)
    names = ["time", *VALUE_COLUMNS]
    types = {"time": pa.int64(), **{c: schema.field(c).type for c in VALUE_COLUMNS}}
    read_options = pacsv.ReadOptions(column_names=names)
    convert_options = pacsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False)
    with pq.ParquetWriter(path, schema) as writer:
        for market in plan.markets:

            def flush(data: bytes, count: int, market: MarketKey = market) -> None:
                try:
                    table = pacsv.read_csv(
                        io.BytesIO(data), read_options=read_options, convert_options=convert_options
                    )
                except pa.ArrowInvalid as error:
                    raise ExportError(
                        f"{market.exchange} {market.base_id}/{market.quote_id}: {error}"
                    ) from None
                columns = [pa.repeat(value, count) for value in market]
                columns.append(table.column("time").cast(pa.timestamp("ms", tz="UTC")))
                columns += [table.column(c) for c in VALUE_COLUMNS]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                progress.add(count)

            _copy(conn, _PARQUET_COPY, plan, market, _RowBatches(flush))
    return progress.done


def write_csv(conn: PgConnection, plan: ExportPlan, path: Path, progress: Progress) -> int:
    """Every bar of the plan into a CSV file at `path`: a header, then PostgreSQL's own CSV rows
    (each NUMERIC's exact text, time as ISO-8601 UTC), passed through in batches."""
    with open(path, "wb") as handle:
        handle.write((",".join(COLUMNS) + "\n").encode())

        def flush(data: bytes, count: int) -> None:
            handle.write(data)
            progress.add(count)

        sink = _RowBatches(flush)
        for market in plan.markets:
            _copy(conn, _CSV_COPY, plan, market, sink)
    return progress.done


WRITERS = {"parquet": write_parquet, "csv": write_csv}


def export(
    conn: PgConnection,
    markets: list[MarketKey],
    interval: Interval,
    start_ms: int,
    end_ms: int,
    fmt: str,
    output: Path,
) -> ExportPlan:
    """Plan and write an export on `conn` in one read-only snapshot; the file is written beside
    `output` and renamed to it once complete, so a failed export leaves no partial file behind."""
    conn.rollback()
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        plan = plan_export(conn, markets, interval, start_ms, end_ms, decimal_shapes=fmt == "parquet")
        progress = Progress(plan.rows)
        WRITERS[fmt](conn, plan, partial, progress)
        progress.finish()
        os.replace(partial, output)
        return plan
    finally:
        conn.rollback()
        partial.unlink(missing_ok=True)


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
    import psycopg2

    from common.db import DatabaseError, connect
    from fetchers.exchanges.base import UnknownSymbolError
    from fetchers.rest.jobs import BackfillRequestError, validate_range

    settings = load_settings_or_exit()
    exchange = exchange_or_exit(exchange)
    chosen_interval = interval_or_exit(interval)
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
        conn = connect(settings)
    except DatabaseError as error:
        fail(str(error))
    try:
        try:
            markets = resolve_markets(conn, exchange, names)
        except UnknownSymbolError as error:
            fail(str(error), EXIT_USAGE)
        start_ms, end_ms = datetime_to_ms(start_at), datetime_to_ms(end_at)
        plan = export(conn, markets, chosen_interval, start_ms, end_ms, fmt, path)
    except ExportError as error:
        fail(str(error), EXIT_FAILED)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror or error}")
    except psycopg2.errors.UndefinedTable:
        fail("the database has no coin-for-rich schema yet; create it with: python -m scripts.database init")
    except psycopg2.Error as error:
        fail(f"database error: {str(error).strip().splitlines()[0]}")
    finally:
        conn.close()
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
