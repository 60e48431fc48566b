"""Platform start-up, shared by `docker compose` (the `init` service) and `make up` / `make demo`.

    python -m scripts.platform init [--wait-seconds 60]

Waits for PostgreSQL, initialises the database as `python -m scripts.database init` does, then
loads every exchange's market list into `symbol_exchange`. An exchange that cannot be reached is
a warning, not a failure: the others still start, and the daily market refresh fills it in later.
The last line of `logs/init.log` is `Initialization complete` once the platform is ready.
"""

from __future__ import annotations

import asyncio
import sys
import time

import click

from common.db import DatabaseError, connect
from common.exchanges import EXCHANGES
from common.logging_setup import setup_logging
from common.schema import init_database
from common.settings import Settings, load_settings_or_exit
from fetchers.rest.markets import MarketsUnavailable, refresh_markets

READY_LINE = "Initialization complete"


def wait_for_server(settings: Settings, wait_seconds: float, log) -> bool:
    """Wait until PostgreSQL accepts connections (it may still be starting, as in docker compose)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            connect(settings, dbname="postgres").close()
            return True
        except DatabaseError as error:
            if time.monotonic() + delay > deadline:
                log.error("PostgreSQL not ready after %.0f s: %s", wait_seconds, error)
                return False
            log.info("waiting for PostgreSQL: %s", error)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@click.group()
def cli() -> None:
    """Bring the platform up."""


@cli.command()
@click.option("--wait-seconds", default=60.0, show_default=True, help="how long to wait for PostgreSQL")
def init(wait_seconds: float) -> None:
    """Schema and market lists; ends with 'Initialization complete' in logs/init.log."""
    settings = load_settings_or_exit()
    log = setup_logging("init")
    if not wait_for_server(settings, wait_seconds, log):
        sys.exit(1)
    try:
        result = init_database(settings)
    except DatabaseError as error:
        log.error("%s", error)
        sys.exit(1)
    mode = "TimescaleDB" if result.timescale else "plain PostgreSQL"
    log.info("schema ready in %r (%s)%s", settings.postgres_db, mode, " (created)" if result.created else "")
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
