"""Database commands.

python -m scripts.database init [--plain]            create the database if needed, apply the schema,
                                                     fill the summaries from existing rows
python -m scripts.database refresh-aggregates [--start ISO --end ISO]
"""

from __future__ import annotations

import click

from common.db import DatabaseError, refresh_aggregates
from common.schema import init_database
from common.settings import load_settings_or_exit
from common.timeutil import parse_utc
from scripts.cli import EXIT_USAGE, fail


@click.group()
def cli() -> None:
    """Manage the coin-for-rich database."""


@cli.command()
@click.option("--plain", is_flag=True, help="Plain PostgreSQL tables even where TimescaleDB is installed.")
def init(plain: bool) -> None:
    """Create the database if missing, apply the schema (idempotent, all-or-nothing) and fill the
    summaries from rows already in ohlcvs. TimescaleDB installed but not preloaded is refused."""
    settings = load_settings_or_exit()
    try:
        result = init_database(settings, plain=plain)
    except DatabaseError as error:
        fail(str(error))
    mode = "TimescaleDB hypertable + continuous aggregates" if result.timescale else "plain PostgreSQL"
    created = " (created)" if result.created else ""
    click.echo(f"schema ready in database {settings.postgres_db!r}{created}: {mode}")


@cli.command("refresh-aggregates")
@click.option("--start", help="ISO start (UTC if no zone); default: oldest candle")
@click.option("--end", help="ISO end, exclusive; default: newest candle")
def refresh_aggregates_command(start: str | None, end: str | None) -> None:
    """Rebuild every summary level over the buckets touched by [start, end)."""
    settings = load_settings_or_exit()
    try:
        start_at = parse_utc(start) if start else None
        end_at = parse_utc(end) if end else None
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    if (start_at is None) != (end_at is None):
        fail("give both --start and --end, or neither", EXIT_USAGE)
    if start_at and end_at and end_at <= start_at:
        fail("--end must be after --start", EXIT_USAGE)
    try:
        refresh_aggregates(settings, start_at, end_at)
    except DatabaseError as error:
        fail(str(error))
    click.echo("aggregates refreshed")


if __name__ == "__main__":
    cli()
