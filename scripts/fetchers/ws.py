"""Live 1-minute bars over the exchanges' websockets.

    python -m scripts.fetchers.ws fetch --exchange binance [--symbols BTC/USDT,ETHBTC] [--shard 0/2]
    python -m scripts.fetchers.ws update

`fetch` follows every trading market of `symbol_exchange` (or the given ones; with --shard i/n the
i-th of n processes takes its share) and keeps the latest bars in Redis (`ws_send_…` hashes and
channels). `update` moves closed bars from Redis into `ohlcvs`. Both run until SIGINT/SIGTERM.
Exit codes: 0 stopped, 1 a service failed, 2 bad input.
"""

from __future__ import annotations

import asyncio
import signal

import click
import psycopg2
import redis

from common.db import DatabaseError
from common.exchanges import EXCHANGES
from common.logging_setup import setup_logging
from common.metrics import SnapshotPublisher
from common.redis_clients import async_client, sync_client
from common.settings import load_settings_or_exit
from fetchers.exchanges.base import UnknownSymbolError
from fetchers.ws.metrics import StreamCollector, registry_of, updater_registry
from fetchers.ws.stream import Shard, StreamEngine
from fetchers.ws.updater import Updater
from scripts.cli import EXIT_USAGE, fail


@click.group()
def cli() -> None:
    """Live 1-minute bars: websocket fetchers and the Redis -> database updater."""


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
@click.option("--symbols", help="comma-separated BASE/QUOTE or exchange symbols (default: all trading)")
@click.option(
    "--shard", default="0/1", show_default=True, help="i/n: this process takes the i-th of n shares"
)
def fetch(exchange: str, symbols: str | None, shard: str) -> None:
    """Stream the 1-minute bars of one exchange into Redis until stopped."""
    settings = load_settings_or_exit()
    if exchange not in EXCHANGES:
        fail(f"unknown exchange {exchange!r}; choose one of {', '.join(EXCHANGES)}", EXIT_USAGE)
    try:
        chosen_shard = Shard.parse(shard)
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    wanted = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
    log = setup_logging(f"ws_fetch_{exchange}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        client = async_client(settings, pack_with_hiredis=True)
        engine = StreamEngine(settings, exchange, client, wanted, chosen_shard)
        metrics = SnapshotPublisher(settings, f"fetch-{exchange}", registry_of(StreamCollector(engine)))
        metrics.start()
        try:
            await engine.run(stop)
        finally:
            await asyncio.to_thread(metrics.stop)
            await client.aclose()

    try:
        asyncio.run(main())
    except UnknownSymbolError as error:
        fail(str(error), EXIT_USAGE)
    except ValueError as error:
        fail(str(error))
    except DatabaseError as error:
        fail(str(error))
    except psycopg2.errors.UndefinedTable:
        fail("the database has no coin-for-rich schema yet; create it with: python -m scripts.database init")
    except (redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError) as error:
        fail(f"cannot use Redis: {error}")
    log.info("%s fetcher stopped", exchange)


@cli.command()
def update() -> None:
    """Move closed bars from Redis into ohlcvs every UPDATER_FLUSH_SECONDS until stopped."""
    settings = load_settings_or_exit()
    log = setup_logging("ws_update")
    stopping = False

    def request_stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    client = sync_client(settings)
    updater = Updater(settings, client)
    metrics = SnapshotPublisher(settings, "updater", updater_registry(updater)).start()
    log.info("updater started: flushing every %gs", settings.updater_flush_seconds)
    try:
        updater.run(lambda: stopping)
    finally:
        updater.stop()
        metrics.stop()
        client.close()
    log.info("updater stopped")


if __name__ == "__main__":
    cli()
