"""The pure decisions behind `init` and the aggregate refreshes: which database path to take, and
which buckets a refresh may materialise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.db import AGGREGATE_LEVELS, DatabaseError, bucket_window, closed_until
from common.schema import TimescaleProbe, preload_includes_timescaledb, use_timescaledb

pytestmark = pytest.mark.unit

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
# Wednesday 2021-06-02 10:30:45 UTC
NOW = datetime(2021, 6, 2, 10, 30, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    "preload",
    [
        "timescaledb",
        "pg_stat_statements,timescaledb",
        " pg_stat_statements , timescaledb ",
        '"timescaledb"',
        "$libdir/timescaledb",
        "timescaledb.so",
    ],
)
def test_preload_lists_that_load_timescaledb(preload):
    assert preload_includes_timescaledb(preload)


@pytest.mark.parametrize("preload", ["", "pg_stat_statements", "timescaledb_toolkit", "pg_timescaledb"])
def test_preload_lists_that_do_not(preload):
    assert not preload_includes_timescaledb(preload)


def test_no_timescaledb_on_the_server_means_plain():
    assert use_timescaledb(TimescaleProbe(available=False, installed=False, preload=""), plain=False) is False


def test_installed_and_preloaded_means_timescaledb():
    probe = TimescaleProbe(available=True, installed=False, preload="pg_stat_statements,timescaledb")
    assert use_timescaledb(probe, plain=False) is True


def test_installed_but_not_preloaded_is_refused_with_how_to_enable_it():
    probe = TimescaleProbe(available=True, installed=False, preload="pg_stat_statements")
    with pytest.raises(DatabaseError) as raised:
        use_timescaledb(probe, plain=False)
    message = str(raised.value)
    assert "not preloaded" in message and "shared_preload_libraries" in message and "--plain" in message
    assert "\n" not in message


def test_plain_can_be_asked_for_where_timescaledb_is_installed():
    probe = TimescaleProbe(available=True, installed=False, preload="")
    assert use_timescaledb(probe, plain=True) is False


def test_the_server_setting_switches_timescaledb_off():
    probe = TimescaleProbe(available=True, installed=False, preload="", switched_off=True)
    assert use_timescaledb(probe, plain=False) is False


def test_plain_is_refused_for_a_database_already_on_timescaledb():
    probe = TimescaleProbe(available=True, installed=True, preload="timescaledb")
    with pytest.raises(DatabaseError, match="already uses TimescaleDB"):
        use_timescaledb(probe, plain=True)


def test_unreadable_preload_setting_is_tried():
    assert use_timescaledb(TimescaleProbe(available=True, installed=False, preload=None), plain=False) is True


def test_closed_until_is_the_end_of_the_last_bucket_over_a_minute_ago():
    assert closed_until(timedelta(minutes=5), NOW) == datetime(2021, 6, 2, 10, 25, tzinfo=UTC)
    assert closed_until(DAY, NOW) == datetime(2021, 6, 2, tzinfo=UTC)
    assert closed_until(WEEK, NOW) == datetime(2021, 5, 31, tzinfo=UTC)  # a Monday
    # 00:00:30: the last minute of yesterday may still be rewritten, so yesterday is still open.
    assert closed_until(DAY, datetime(2021, 6, 2, 0, 0, 30, tzinfo=UTC)) == datetime(2021, 6, 1, tzinfo=UTC)


def test_window_widens_a_past_range_to_whole_buckets():
    start = datetime(2021, 5, 12, 13, 17, tzinfo=UTC)  # a Wednesday
    end = datetime(2021, 5, 20, 9, 41, tzinfo=UTC)
    assert bucket_window(DAY, start, end, NOW) == (
        datetime(2021, 5, 12, tzinfo=UTC),
        datetime(2021, 5, 21, tzinfo=UTC),
    )
    assert bucket_window(WEEK, start, end, NOW) == (
        datetime(2021, 5, 10, tzinfo=UTC),
        datetime(2021, 5, 24, tzinfo=UTC),
    )


@pytest.mark.parametrize("width", AGGREGATE_LEVELS.values())
def test_window_never_reaches_a_bucket_that_is_still_open(width):
    start = NOW - timedelta(days=20, minutes=13)
    window = bucket_window(width, start, NOW, NOW)
    assert window is not None
    first, last = window
    assert first <= start and (start - first) < width
    assert last <= NOW - timedelta(minutes=1) < last + width
    assert (last - first) % width == timedelta(0)


def test_window_is_none_when_every_touched_bucket_is_open():
    assert bucket_window(WEEK, datetime(2021, 6, 1, 3, tzinfo=UTC), NOW, NOW) is None
    assert bucket_window(DAY, datetime(2021, 6, 2, 9, tzinfo=UTC), NOW, NOW) is None


def test_everything_means_from_the_beginning_up_to_the_last_closed_bucket():
    assert bucket_window(DAY, None, None, NOW) == (None, datetime(2021, 6, 2, tzinfo=UTC))
