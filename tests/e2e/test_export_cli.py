"""`python -m scripts.export` run as a user runs it, over history backfilled from the simulator: the
file read back with pyarrow (or as CSV text) equals `ohlcvs` and the API's bars exactly."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.db import connection
from common.timeutil import ms_to_datetime
from tests.conftest import service_env
from tests.support.backfill import day_aligned_range, run_job, stored_candles
from tests.support.web import http_get, running_web

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VALUES = ("open", "high", "low", "close", "volume")


def export_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **service_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "scripts.export", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def iso(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M")


@pytest.fixture
def backfilled(platform_settings, simulator):
    """Three days of two Binance markets fetched from the simulator (aggregates refreshed by the job)."""
    symbols = [m["symbol"] for m in simulator.markets("binance") if m["status"] == "TRADING"][:2]
    start_ms, end_ms = day_aligned_range(simulator, days_back=5, days=3)
    job = run_job(platform_settings, "binance", start_ms, end_ms, symbols)
    assert job.failed == 0 and job.candles > 0
    return symbols, start_ms, end_ms


def market_of(settings, symbol: str) -> tuple[str, str, str]:
    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT exchange, base_id, quote_id FROM symbol_exchange WHERE symbol = %s", (symbol,))
        return cur.fetchone()


def test_parquet_of_the_minutes_read_back_equals_ohlcvs(platform_settings, backfilled, tmp_path):
    symbols, start_ms, end_ms = backfilled
    output = tmp_path / "minutes.parquet"
    done = export_cli(
        platform_settings, "--exchange", "binance", "--symbols", ",".join(symbols), "--interval", "1m",
        "--start", iso(start_ms), "--end", iso(end_ms), "--format", "parquet", "--output", str(output),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pq.read_table(output)
    for name in VALUES:
        assert pa.types.is_decimal(table.schema.field(name).type), "never float"
    got = table.to_pylist()
    want = []
    for symbol in symbols:
        market = dict(
            zip(("exchange", "base_id", "quote_id"), market_of(platform_settings, symbol), strict=True)
        )
        for row in stored_candles(platform_settings, "binance", symbol, start_ms, end_ms):
            want.append({**market, "time": ms_to_datetime(row.pop("time")), **row})
    assert len(want) > 2 * 24 * 60, "the backfill stored the range"
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == b
        assert all(isinstance(a[name], Decimal) for name in VALUES)
    assert f"{len(want):,} 1m bars of 2 market(s) written to {output}" in done.stdout


@pytest.mark.parametrize("interval", ["1h", "1D"])
def test_a_summary_level_export_equals_the_api_bars(platform_settings, backfilled, tmp_path, interval):
    symbols, start_ms, end_ms = backfilled
    output = tmp_path / "level.parquet"
    done = export_cli(
        platform_settings, "--exchange", "binance", "--symbols", ",".join(symbols), "--interval", interval,
        "--start", iso(start_ms), "--end", iso(end_ms), "--output", str(output),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = pq.read_table(output).to_pylist()
    want = []
    with running_web(platform_settings) as base:
        for symbol in symbols:
            exchange, base_id, quote_id = market_of(platform_settings, symbol)
            market = dict(exchange=exchange, base_id=base_id, quote_id=quote_id)
            status, bars = http_get(
                f"{base}/api/ohlcvs", **market, interval=interval, start=start_ms, end=end_ms - 1, limit=5000
            )
            assert status == 200 and bars
            for bar in bars:
                values = {name: Decimal(bar[name]) for name in VALUES}
                want.append(dict(exchange=exchange, base_id=base_id, quote_id=quote_id,
                                 time=ms_to_datetime(bar["time"]), **values))  # fmt: skip
    assert got == want


def test_csv_holds_the_stored_text(platform_settings, backfilled, tmp_path):
    symbols, start_ms, end_ms = backfilled
    output = tmp_path / "minutes.csv"
    done = export_cli(
        platform_settings, "--exchange", "binance", "--symbols", symbols[0], "--format", "csv",
        "--start", iso(start_ms), "--end", iso(end_ms), "--output", str(output),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(output, newline="") as handle:
        rows = [tuple(row.values()) for row in csv.DictReader(handle)]
    with connection(platform_settings) as conn, conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute(
            "SELECT o.exchange, o.base_id, o.quote_id, o.time::text, o.open::text, o.high::text, "
            "o.low::text, o.close::text, o.volume::text FROM ohlcvs o "
            "JOIN symbol_exchange s USING (exchange, base_id, quote_id) "
            "WHERE s.symbol = %s AND o.time >= %s AND o.time < %s ORDER BY o.time",
            (symbols[0], ms_to_datetime(start_ms), ms_to_datetime(end_ms)),
        )
        want = cur.fetchall()
    assert want and rows == want


def test_bad_input_is_one_line_and_exit_code_2(platform_settings, backfilled, tmp_path):
    symbols, start_ms, end_ms = backfilled
    done = export_cli(
        platform_settings, "--exchange", "binance", "--symbols", "NOPE/COIN", "--start", iso(start_ms),
        "--end", iso(end_ms), "--output", str(tmp_path / "x.parquet"),
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.startswith("error: unknown symbol 'NOPE/COIN' on binance")
        and done.stderr.count("\n") == 1
    )
    assert list(tmp_path.iterdir()) == []
