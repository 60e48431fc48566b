"""The simulator's Binance public archive over real sockets: the real paths, zips of the same
klines as REST (ms before 2025, µs from then on), checksums, what does not exist, and the faults."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
import urllib.request
import zipfile
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.timeutil import datetime_to_ms
from tests.support.simulator import running_simulator

pytestmark = pytest.mark.integration

START_MS = datetime_to_ms(datetime(2025, 1, 20, 12, tzinfo=UTC))
DEC_11 = datetime_to_ms(datetime(2024, 12, 11, tzinfo=UTC))
JAN_5 = datetime_to_ms(datetime(2025, 1, 5, tzinfo=UTC))
DAY = 86_400_000
FIELDS = ("open", "high", "low", "close", "volume")


def fetch(url: str, timeout: float = 30) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def csv_rows(data: bytes) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (name,) = archive.namelist()
        text = archive.read(name).decode()
    assert not text.startswith("open_time")
    return [line.split(",") for line in text.splitlines()]


@pytest.fixture(scope="module")
def sim():
    with running_simulator(start_ms=START_MS, history_days=40, speed=60.0, markets=3) as handle:
        yield handle


def url(sim, kind: str, symbol: str, period: str, checksum: bool = False) -> str:
    base = sim.settings_overrides()["binance_archive_url"]
    return f"{base}/data/spot/{kind}/klines/{symbol}/1m/{symbol}-1m-{period}.zip" + (
        ".CHECKSUM" if checksum else ""
    )


def test_a_closed_month_before_2025_is_in_milliseconds_and_equals_rest_truth(sim):
    symbol = sim.markets("binance")[0]["symbol"]
    status, data, headers = fetch(url(sim, "monthly", symbol, "2024-12"))
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert not any(name.lower().startswith("x-mbx-used-weight") for name in headers)
    rows = csv_rows(data)
    truth = sim.truth("binance", symbol, DEC_11, DEC_11 + 21 * DAY)
    assert len(rows) == len(truth) == 21 * 1440
    for row, want in zip(rows, truth, strict=True):
        assert len(row) == 12 and int(row[0]) == want["time"] and int(row[6]) == want["time"] + 59_999
        assert [Decimal(v) for v in row[1:6]] == [Decimal(want[f]) for f in FIELDS]
        assert all(len(v.split(".")[1]) == 8 for v in row[1:6])  # the REST klines' own text
    status, checksum, _ = fetch(url(sim, "monthly", symbol, "2024-12", checksum=True))
    assert status == 200
    assert checksum.decode() == f"{hashlib.sha256(data).hexdigest()}  {symbol}-1m-2024-12.zip\n"


def test_a_closed_day_of_2025_is_in_microseconds(sim):
    symbol = sim.markets("binance")[1]["symbol"]
    status, data, _ = fetch(url(sim, "daily", symbol, "2025-01-05"))
    assert status == 200
    rows = csv_rows(data)
    truth = sim.truth("binance", symbol, JAN_5, JAN_5 + DAY)
    assert [int(r[0]) for r in rows] == [t["time"] * 1000 for t in truth]
    assert [int(r[6]) for r in rows] == [t["time"] * 1000 + 59_999_999 for t in truth]
    assert [Decimal(r[4]) for r in rows] == [Decimal(t["close"]) for t in truth]


def test_only_closed_periods_with_history_exist(sim):
    symbol = sim.markets("binance")[0]["symbol"]
    for kind, period in (
        ("daily", "2025-01-20"),  # today
        ("monthly", "2025-01"),  # the current month
        ("monthly", "2024-11"),  # before the simulated history
        ("daily", "2024-12"),  # a month under the daily path
        ("monthly", "2024-13"),
    ):
        assert fetch(url(sim, kind, symbol, period))[0] == 404, period
    assert fetch(url(sim, "daily", "NOPEUSDT", "2025-01-05"))[0] == 404
    assert fetch(url(sim, "daily", symbol, "2025-01-19"))[0] == 200


def test_faults_missing_checksum_truncate_slow_and_the_served_log(sim):
    symbol = sim.markets("binance")[2]["symbol"]
    sim.reset_stats()
    try:
        sim.set_faults("binance", archive_missing_rate=1.0)
        assert fetch(url(sim, "daily", symbol, "2025-01-06"))[0] == 404
        assert fetch(url(sim, "daily", symbol, "2025-01-06", checksum=True))[0] == 404
        sim.set_faults("binance", archive_missing_rate=0.0, archive_checksum_rate=1.0)
        _, data, _ = fetch(url(sim, "daily", symbol, "2025-01-06"))
        _, checksum, _ = fetch(url(sim, "daily", symbol, "2025-01-06", checksum=True))
        assert hashlib.sha256(data).hexdigest() != checksum.decode().split()[0]
        assert len(csv_rows(data)) == 1440  # a readable file, with other data than its checksum names
        sim.set_faults("binance", archive_checksum_rate=0.0, archive_truncate_rate=1.0)
        _, cut, _ = fetch(url(sim, "daily", symbol, "2025-01-06"))
        with pytest.raises(zipfile.BadZipFile):
            csv_rows(cut)
        sim.set_faults("binance", archive_truncate_rate=0.0, archive_slow_rate=1.0)
        began = time.monotonic()
        _, slow, _ = fetch(url(sim, "daily", symbol, "2025-01-06"))
        assert time.monotonic() - began >= sim.simulator.config.http_hang_seconds * 0.9
        assert hashlib.sha256(slow).hexdigest() == checksum.decode().split()[0]
    finally:
        sim.reset_faults()
    served = sim.served()
    path = f"/data/spot/daily/klines/{symbol}/1m/{symbol}-1m-2025-01-06.zip"
    assert [(e["status"], e["fault"]) for e in served["archive"] if e["path"] == path] == [
        (404, "missing"),
        (200, "checksum"),
        (200, "truncate"),
        (200, "slow"),
    ]
    assert served["klines"] == []
    assert sim.stats()["binance"]["rest_requests"] == 0


def test_a_file_is_the_same_bytes_whenever_it_is_built(monkeypatch):
    """Two simulators (or one after its cache let the file go) serve a period with the same
    digest: the zip carries no time of its making."""
    from simulator.binance_archive import zip_of

    built = []
    for wall_clock in (1_700_000_000.0, 1_800_000_000.0):
        monkeypatch.setattr(time, "time", lambda wall_clock=wall_clock: wall_clock)
        built.append(zip_of("BTCUSDT-1m-2025-01-06.zip", "1,2,3\n"))
    assert built[0] == built[1]
    assert csv_rows(built[0]) == [["1", "2", "3"]]
