"""`scripts.export` against a real PostgreSQL: the file read back equals the database exactly."""

from __future__ import annotations

import csv
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from common.candle import Candle, Market, MarketKey
from common.db import connection, refresh_aggregates, upsert_candles, upsert_markets
from common.levels import INTERVALS, BarQuery
from common.timeutil import ms_to_datetime
from scripts import export as export_module
from scripts.export import main
from web.reads import read_bars

pytestmark = pytest.mark.integration

MIN = 60_000
BASE_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday, first of a month
BTC = Market("binance", "BTC", "USDT", "BTCUSDT")
ETH = Market("binance", "ETH", "USDT", "ETHUSDT")
VALUES = ("open", "high", "low", "close", "volume")
MINUTES = 2 * 24 * 60 + 17  # two days and a bit: every level has several bars, 1M one


def varied_candle(market: Market, index: int) -> Candle:
    """Values of the scales exchanges send: trailing zeros kept, 2 to 12 decimals, up to 9 digits
    before the point, tiny prices."""
    scale = 2 + index % 11
    price = Decimal(100 + index % 37) + Decimal(index).scaleb(-scale)
    if market is ETH:
        price = Decimal(index + 1).scaleb(-12)  # 0.000000000001 and up: a tiny price
    volume = Decimal(123456789 + index).scaleb(-(index % 8)) if index % 5 else Decimal("0")
    return Candle(
        market.exchange,
        market.base_id,
        market.quote_id,
        BASE_MS + index * MIN,
        f"{price:.{scale}f}",
        f"{price + 1:.{scale}f}",
        f"{price / 2:.{scale}f}" if market is BTC else str(price),
        str(price),
        str(volume) if index != 7 else "0.00000000",
    )


@pytest.fixture
def seeded(settings) -> dict[Market, list[Candle]]:
    written = {m: [varied_candle(m, i) for i in range(MINUTES)] for m in (BTC, ETH)}
    with connection(settings) as conn:
        upsert_markets(conn, [BTC, ETH])
        upsert_candles(conn, [c for candles in written.values() for c in candles])
    refresh_aggregates(settings, None, None)
    return written


def run_export(tmp_path, *args: str, name: str = "out.parquet"):
    output = tmp_path / name
    result = CliRunner().invoke(main, [*args, "--output", str(output)])
    return result, output


def iso(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M")


FIRST_BTC_MINUTE = (
    "--exchange",
    "binance",
    "--symbols",
    "BTC/USDT",
    "--start",
    iso(BASE_MS),
    "--end",
    iso(BASE_MS + MIN),
)
"""The arguments of an export of BTC/USDT's first seeded minute."""


def stored_rows(settings, markets: list[Market], start_ms: int, end_ms: int) -> list[dict]:
    """`ohlcvs` as psycopg2 reads it: NUMERIC as Decimal, time as an aware datetime."""
    rows = []
    with connection(settings) as conn, conn.cursor() as cur:
        for m in markets:
            cur.execute(
                "SELECT exchange, base_id, quote_id, time, open, high, low, close, volume FROM ohlcvs "
                "WHERE exchange = %s AND base_id = %s AND quote_id = %s AND time >= %s AND time < %s "
                "ORDER BY time",
                (m.exchange, m.base_id, m.quote_id, ms_to_datetime(start_ms), ms_to_datetime(end_ms)),
            )
            names = [d.name for d in cur.description]
            rows += [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return rows


def assert_exactly_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == b, f"{a} != {b}"
        for column in VALUES:
            assert isinstance(a[column], Decimal) and a[column] == b[column]


def test_parquet_of_minutes_equals_ohlcvs_decimals_included(settings, seeded, tmp_path):
    result, output = run_export(
        tmp_path, "--exchange", "binance", "--symbols", "btc/usdt,ETHUSDT", "--interval", "1m",
        "--start", iso(BASE_MS), "--end", iso(BASE_MS + MINUTES * MIN), "--format", "parquet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{2 * MINUTES:,} 1m bars of 2 market(s)" in result.stdout
    table = pq.read_table(output)
    assert_exactly_equal(
        table.to_pylist(), stored_rows(settings, [BTC, ETH], BASE_MS, BASE_MS + MINUTES * MIN)
    )
    # Each column is as wide as its values need and no wider: ETH's 12 decimals, BTC's 3 digits
    # before the point; volume's 9 digits before the point and the 8 decimals of "0.00000000".
    types = {name: table.schema.field(name).type for name in VALUES}
    assert types["open"] == pa.decimal128(15, 12)
    assert types["high"] == pa.decimal128(15, 12)
    assert types["volume"] == pa.decimal128(17, 8)
    assert table.schema.field("time").type == pa.timestamp("ms", tz="UTC")


def test_range_is_half_open_and_rows_come_market_by_market_oldest_first(settings, seeded, tmp_path):
    start, end = BASE_MS + 10 * MIN, BASE_MS + 20 * MIN
    result, output = run_export(
        tmp_path, "--exchange", "binance", "--symbols", "ETH/USDT,BTC/USDT,ETH/USDT",
        "--start", iso(start), "--end", iso(end),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pq.read_table(output).to_pylist()
    assert [(r["base_id"], r["time"]) for r in rows] == [
        (base, ms_to_datetime(start + i * MIN)) for base in ("ETH", "BTC") for i in range(10)
    ]
    assert_exactly_equal(rows, stored_rows(settings, [ETH, BTC], start, end))


def test_batches_become_row_groups_and_change_nothing(settings, seeded, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "BATCH_BYTES", 20_000)  # COPY's pieces get cut into lines
    monkeypatch.setattr(export_module, "ROW_GROUP_ROWS", 1000)
    result, output = run_export(
        tmp_path, "--exchange", "binance", "--symbols", "BTC/USDT,ETH/USDT",
        "--start", iso(BASE_MS), "--end", iso(BASE_MS + MINUTES * MIN),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = pq.ParquetFile(output).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert len(sizes) >= 3 and all(size >= 1000 for size in sizes[:-1]), sizes  # batches gathered
    assert_exactly_equal(
        pq.read_table(output).to_pylist(), stored_rows(settings, [BTC, ETH], BASE_MS, BASE_MS + MINUTES * MIN)
    )


@pytest.mark.parametrize("interval", ["5m", "15m", "30m", "1h", "3h", "6h", "12h", "1D", "7D", "14D", "1M"])
def test_summary_levels_equal_the_bars_the_api_reads(settings, seeded, tmp_path, interval):
    end = BASE_MS + MINUTES * MIN
    result, output = run_export(
        tmp_path, "--exchange", "binance", "--symbols", "BTC/USDT,ETH/USDT", "--interval", interval.lower()
        if interval in ("1D", "7D", "14D") else interval, "--start", iso(BASE_MS), "--end", iso(end),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    want = []
    with connection(settings) as conn:
        for m in (BTC, ETH):
            query = BarQuery(
                MarketKey(m.exchange, m.base_id, m.quote_id), INTERVALS[interval], BASE_MS, end - 1, 10**9
            )
            for bar in read_bars(conn, query):
                values = dict(zip(VALUES, map(Decimal, bar[1:]), strict=True))
                want.append(
                    dict(
                        exchange=m.exchange,
                        base_id=m.base_id,
                        quote_id=m.quote_id,
                        time=ms_to_datetime(bar[0]),
                        **values,
                    )
                )
    assert want, "no bars to compare"
    assert_exactly_equal(pq.read_table(output).to_pylist(), want)


def test_csv_holds_every_value_as_its_stored_text(settings, seeded, tmp_path):
    start, end = BASE_MS, BASE_MS + 300 * MIN
    result, output = run_export(
        tmp_path, "--exchange", "binance", "--symbols", "BTC/USDT,ETH/USDT", "--format", "csv",
        "--start", iso(start), "--end", iso(end), name="out.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT exchange, base_id, quote_id, "
            "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00', "
            "open::text, high::text, low::text, close::text, volume::text FROM ohlcvs "
            "WHERE time >= %s AND time < %s ORDER BY base_id = 'ETH', time",
            (ms_to_datetime(start), ms_to_datetime(end)),
        )
        want = [dict(zip(export_module.COLUMNS, row, strict=True)) for row in cur.fetchall()]
    assert len(want) == 2 * 300
    assert rows == want
    assert rows[0]["volume"] == "0" and rows[7]["volume"] == "0.00000000", "each value's own text, zeros kept"


def test_a_value_wider_than_decimal128_stops_parquet_with_one_line_but_csv_keeps_it(settings, tmp_path):
    wide = "1234567890123456789012345678901.123456789"  # 31 + 9 = 40 digits
    with connection(settings) as conn:
        upsert_markets(conn, [BTC])
        upsert_candles(conn, [Candle("binance", "BTC", "USDT", BASE_MS, "1.5", "2", "1", "1.5", wide)])
    args = list(FIRST_BTC_MINUTE)
    result, output = run_export(tmp_path, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: volume needs 40 significant digits (31 before the point, 9 after)"
    )
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == [], "no partial file left behind"
    result, output = run_export(tmp_path, *args, "--format", "csv", name="wide.csv")
    assert result.exit_code == 0, result.output
    assert output.read_text().splitlines()[1].endswith(f",1.5,2,1,1.5,{wide}")


def test_an_empty_range_writes_a_valid_file_and_says_so(settings, seeded, tmp_path):
    result, output = run_export(
        tmp_path, "--exchange", "binance", "--symbols", "BTC/USDT",
        "--start", iso(BASE_MS - 60 * MIN), "--end", iso(BASE_MS),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: no 1m bars" in result.stderr
    assert pq.read_table(output).num_rows == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--exchange": "kraken"}, "error: unknown exchange 'kraken'"),
        ({"--symbols": "DOGE/EUR"}, "error: unknown symbol 'DOGE/EUR' on binance"),
        ({"--interval": "2h"}, "error: unknown interval '2h'; choose one of 1m 5m"),
        ({"--format": "xlsx"}, "error: unknown format 'xlsx'; choose parquet or csv"),
        ({"--start": "2024-01-02"}, "error: --end (2024-01-02T00:00:00+00:00) must be after --start"),
        ({"--end": "2023-12-31"}, "error: --end (2023-12-31T00:00:00+00:00) must be after --start"),
        ({"--start": "yesterday"}, "error: --start: not an ISO-8601 date/time: 'yesterday'"),
        (
            {"--start": "2024-01-01T00:00:30"},
            "error: --start (2024-01-01T00:00:30+00:00) is not on a whole minute",
        ),
        (
            {"--output": "/nonexistent/folder/out.parquet"},
            "error: --output: the folder '/nonexistent/folder'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(settings, seeded, tmp_path, change, message):
    options = {
        "--exchange": "binance",
        "--symbols": "BTC/USDT",
        "--start": "2024-01-01",
        "--end": "2024-01-02",
        "--output": str(tmp_path / "out.parquet"),
        **change,
    }
    result = CliRunner().invoke(main, [part for pair in options.items() for part in pair])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.parquet").exists()


def test_the_file_is_replaced_only_when_the_new_one_is_complete(settings, seeded, tmp_path):
    output = tmp_path / "out.parquet"
    output.write_bytes(b"previous export")
    bad = dict(zip(VALUES, ("1", "1", "1", "1", "9" * 39), strict=True))
    with connection(settings) as conn:
        upsert_candles(conn, [replace(varied_candle(BTC, 0), **bad)])
    args = list(FIRST_BTC_MINUTE)
    result, _ = run_export(tmp_path, *args)
    assert result.exit_code == 1
    assert output.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_a_nan_written_by_hand_stops_parquet_with_one_line(settings, seeded, tmp_path):
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE ohlcvs SET low = 'NaN' WHERE base_id = 'BTC' AND time = %s", (ms_to_datetime(BASE_MS),)
        )
    args = list(FIRST_BTC_MINUTE)
    result, output = run_export(tmp_path, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: binance BTC/USDT: low holds a value that is not a decimal number")
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
