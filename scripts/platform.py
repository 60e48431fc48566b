"""Platform start-up, shared by `docker compose` (the `init` service) and `make up` / `make demo`.

    python -m scripts.platform init [--wait-seconds 60]

Waits for PostgreSQL, creates the database and applies the schema, then loads every exchange's
market list into `symbol_exchange`. An exchange that cannot be reached is a warning, not a failure:
the others still start, and the daily market refresh fills it in later. The last line written to
`logs/init.log` is `Initialization complete` once the platform is ready for its other processes.
"""

from __future__ import annotations

import asyncio
import sys
import time

import click

from common.db import DatabaseError
from common.logging_setup import setup_logging
from common.schema import apply_schema, ensure_database
from common.settings import EXCHANGES, Settings, load_settings_or_exit
from fetchers.rest.markets import MarketsUnavailable, refresh_markets

READY_LINE = "Initialization complete"


def wait_for_database(settings: Settings, wait_seconds: float, log) -> bool:
    """Create the database and apply the schema, retrying while the server is still starting."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            created = ensure_database(settings)
            timescale = apply_schema(settings)
        except DatabaseError as error:
            if time.monotonic() + delay > deadline:
                log.error("database not ready after %.0f s: %s", wait_seconds, error)
                return False
            log.info("waiting for the database: %s", error)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        mode = "TimescaleDB" if timescale else "plain PostgreSQL"
        log.info("schema ready in %r (%s)%s", settings.postgres_db, mode, " (created)" if created else "")
        return True


@click.group()
def cli() -> None:
    """Bring the platform up."""


@cli.command()
@click.option("--wait-seconds", default=60.0, show_default=True, help="how long to wait for PostgreSQL")
def init(wait_seconds: float) -> None:
    """Schema and market lists; ends with 'Initialization complete' in logs/init.log."""
    settings = load_settings_or_exit()
    log = setup_logging("init")
    if not wait_for_database(settings, wait_seconds, log):
        sys.exit(1)
    for exchange in EXCHANGES:
        try:
            asyncio.run(refresh_markets(settings, exchange))
        except MarketsUnavailable as error:
            log.warning("%s (its fetcher starts without markets; the daily refresh retries)", error)
        except DatabaseError as error:
            log.error("%s markets: %s", exchange, error)
            sys.exit(1)
    log.info(READY_LINE)


if __name__ == "__main__":
    cli()
