"""A Binance backfill from the public archive, run the way users run it: `fetch --local` as a
process against the simulator (its archive and REST API), real PostgreSQL and Redis.

The simulated exchange's present is 2025-02-05 06:00, so one backfill meets every kind of file:
closed days of December 2024 (times in ms), the whole of January 2025 as one monthly file (µs),
closed days of February (µs), and the current day over REST."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common import settings as settings_module
from common.db import connection
from common.timeutil import datetime_to_ms, ms_to_datetime
from fetchers.exchanges.binance_archive import parse_period
from tests.support.backfill import assert_matches_truth
from tests.support.simulator import running_simulator

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NOW_MS = datetime_to_ms(datetime(2025, 2, 5, 6, tzinfo=UTC))
START_MS = datetime_to_ms(datetime(2024, 12, 29, tzinfo=UTC))
MARKETS = 3
FAULTS = {
    "archive_missing_rate": 0.15,
    "archive_checksum_rate": 0.15,
    "archive_truncate_rate": 0.3,
    "archive_slow_rate": 0.3,
}


@pytest.fixture
def archive_sim():
    with running_simulator(
        start_ms=NOW_MS,
        speed=60.0,
        history_days=38,
        markets=8,
        seed=3,
        history_cache_days=MARKETS * 40,
        http_hang_seconds=3.0,
        faults={"binance": FAULTS},
    ) as sim:
        yield sim


def fetch(settings, sim, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **sim.env(),
        "REST_RATE_WINDOW_SECONDS": str(sim.simulator.config.rate_window_seconds),
        "BINANCE_REST_WEIGHT_PER_MINUTE": str(sim.simulator.config.binance_weight_per_window),
        "REST_TIMEOUT_SECONDS": "5",
        "ARCHIVE_TIMEOUT_SECONDS": "1.5",
        "ARCHIVE_MAX_RETRIES": "2",
    }
    env.pop("BACKFILL_SOURCE")  # the default, as a user has it
    return subprocess.run(
        [sys.executable, "-m", "scripts.fetchers.rest", "fetch", "--exchange", "binance", *args, "--local"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def warm_files(sim, symbols: list[str]) -> None:
    """Have the simulator build every file once (its candle model takes seconds per month), so the
    backfill's short download timeout meets only the `slow` fault, not the simulator's own work."""
    base = sim.settings_overrides()["binance_archive_url"]
    periods = ["2024-12-29", "2024-12-30", "2024-12-31", "2025-01", "2025-02-01", "2025-02-02"]
    periods += ["2025-02-03", "2025-02-04"]
    for symbol in symbols:
        for period in periods:
            kind = "monthly" if len(period) == 7 else "daily"
            path = f"{base}/data/spot/{kind}/klines/{symbol}/1m/{symbol}-1m-{period}.zip.CHECKSUM"
            try:
                urllib.request.urlopen(path, timeout=300).read()
            except urllib.error.HTTPError as error:
                assert error.code == 404  # a missing file (the fault)


def iso(ms: int) -> str:
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M")


def test_a_backfill_with_every_archive_fault_equals_ground_truth_and_spares_rest(settings, archive_sim):
    sim = archive_sim
    symbols = [m["symbol"] for m in sim.markets("binance") if m["status"] == "TRADING"][:MARKETS]
    assert len(symbols) == MARKETS
    settings_module.get_settings.cache_clear()
    warm_files(sim, symbols)

    result = fetch(
        settings, sim, "--start", iso(START_MS), "--end", iso(NOW_MS), "--symbols", ",".join(symbols)
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "archive files" in result.stderr and "archive files" in result.stdout, result.stdout
    assert_matches_truth(settings, sim, "binance", symbols, START_MS, NOW_MS)

    served = sim.served()
    faults = {entry["fault"] for entry in served["archive"]}
    assert {"missing", "checksum", "truncate", "slow"} <= faults, f"seed 3 met only {faults}"
    clean: dict[str, list[tuple[int, int]]] = {}
    for entry in served["archive"]:
        name = entry["path"].rsplit("/", 1)[1]
        if entry["status"] == 200 and entry["fault"] is None and name.endswith(".zip"):
            symbol, period = name[: -len(".zip")].split("-1m-")
            parsed = parse_period(period)
            clean.setdefault(symbol, []).append((parsed.start_ms, parsed.end_ms))
    assert {len(ranges) for ranges in clean.values()} and set(clean) == set(symbols)
    for request in served["klines"]:
        for start, end in clean.get(request["symbol"], []):
            assert not (request["start"] < end and start <= request["end"]), (
                f"REST weight spent on {request} although the archive served {ms_to_datetime(start)}"
            )
    rest_minutes = {r["symbol"] for r in served["klines"]}
    assert rest_minutes, "the current day and the failed files come over REST"

    with connection(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ohlcvs_errors")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT source, count(*) FROM ohlcvs_coverage WHERE exchange = 'binance' GROUP BY source")
        sources = dict(cur.fetchall())
    assert set(sources) == {"archive", "rest"}, sources


def test_source_archive_refuses_the_current_day_and_records_a_file_it_cannot_get(
    platform_settings, simulator
):
    """`--source archive`: a range reaching into the exchange's current day is bad input (exit 2);
    a missing file is a request failed for good (exit 1, `ohlcvs_errors`), never fetched over REST."""
    env = {**os.environ, "BACKFILL_SOURCE": "rest"}
    now = simulator.clock()["current_minute_ms"]
    today = now - now % 86_400_000
    args = ["fetch", "--exchange", "binance", "--symbols", "BTC/USDT", "--source", "archive", "--local"]

    def run(start_ms: int, end_ms: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts.fetchers.rest",
                *args,
                "--start",
                iso(start_ms),
                "--end",
                iso(end_ms),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = run(today - 86_400_000, today + 60_000)
    assert refused.returncode == 2 and "current day" in refused.stderr, refused.stderr

    simulator.set_faults("binance", archive_missing_rate=1.0)
    failed = run(today - 2 * 86_400_000, today - 86_400_000)
    assert failed.returncode == 1, failed.stderr
    assert "BTCUSDT" in failed.stderr and "failed for good" in failed.stderr
    assert simulator.served()["klines"] == []
    with connection(platform_settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT exception_class, resp_status_code FROM ohlcvs_errors")
        assert cur.fetchall() == [("ArchiveFileError", 404)]
        cur.execute("SELECT count(*) FROM ohlcvs")
        assert cur.fetchone()[0] == 0
