"""Historical backfill over the exchanges' REST APIs.

    python -m scripts.fetchers.rest fetch --exchange bitfinex \
        --start 2021-01-01T00:00:00 --end 2021-01-02T00:00:00
    python -m scripts.fetchers.rest resume --exchange bitfinex
    python -m scripts.fetchers.rest status
    python -m scripts.fetchers.rest markets --exchange binance

Times without a zone are UTC; the range is half-open [start, end). Without --local the job is
queued for Celery workers on the `<exchange>_rest` queue; --wait shows its progress live.
Exit codes: 0 done, 1 a service or the job failed, 2 bad input.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime

import click
import psycopg2
import redis
import redis.asyncio as aioredis

from common.db import DatabaseError
from common.logging_setup import setup_logging
from common.settings import EXCHANGES, Settings, load_settings_or_exit
from common.timeutil import ms_to_datetime, parse_utc
from fetchers.rest.engine import BackfillEngine
from fetchers.rest.job_store import JobInfo, JobStore
from fetchers.rest.jobs import BackfillRequestError, check_exchange, create_job
from fetchers.rest.markets import MarketsUnavailable, refresh_markets
from fetchers.rest.progress import ProgressMeter

POLL_SECONDS = 0.5
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def exchange_or_exit(name: str) -> str:
    try:
        return check_exchange(name)
    except BackfillRequestError as error:
        fail(str(error), EXIT_USAGE)
        raise  # unreachable


def parse_time(value: str, option: str) -> datetime:
    try:
        return parse_utc(value)
    except ValueError as error:
        fail(f"{option}: {error}", EXIT_USAGE)
        raise  # unreachable


def split_symbols(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def run_async(coro):
    """Run a coroutine; service failures become one line and exit code 1."""
    try:
        return asyncio.run(coro)
    except BackfillRequestError as error:
        fail(str(error), EXIT_USAGE)
    except (DatabaseError, MarketsUnavailable) as error:
        fail(str(error))
    except psycopg2.errors.UndefinedTable:
        fail("the database has no coin-for-rich schema yet; create it with: python -m scripts.database init")
    except psycopg2.Error as error:
        fail(f"database error: {str(error).strip().splitlines()[0]}")
    except (redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError) as error:
        fail(f"cannot use Redis: {error}")


def queue_workers(exchange: str) -> list[str]:
    """Names of the Celery workers consuming the exchange's REST queue (empty if none answer)."""
    from celery_app.celery_config import REST_QUEUES
    from celery_app.celery_main import app

    replies = app.control.inspect(timeout=1.5).active_queues() or {}
    queue = REST_QUEUES[exchange]
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues))


def enqueue(exchange: str, job_id: str, copies: int) -> None:
    from celery_app.celery_config import REST_QUEUES
    from celery_app.celery_tasks import drain_backfill_job

    for _ in range(copies):
        drain_backfill_job.apply_async(args=(job_id,), queue=REST_QUEUES[exchange])


def require_workers(exchange: str) -> list[str]:
    try:
        workers = queue_workers(exchange)
    except Exception as error:  # noqa: BLE001 - any broker failure is reported the same way
        fail(f"cannot reach the Celery broker (Redis): {error}")
    if not workers:
        from celery_app.celery_config import REST_QUEUES

        fail(
            f"no Celery worker is consuming the {REST_QUEUES[exchange]} queue, so the job would never run. "
            f"Start one with: celery -A celery_app.celery_main worker -Q {REST_QUEUES[exchange]} "
            f"--concurrency 1   (or add --local to run the job in this process)"
        )
    return workers


async def watch(settings: Settings, job_id: str, engine_task: asyncio.Task | None = None) -> JobInfo:
    """Print progress until the job is finished and its aggregates are refreshed."""
    client = aioredis.from_url(settings.redis_url)
    store = JobStore(client)
    meter = ProgressMeter()
    tty = sys.stderr.isatty()
    last_print = 0.0
    try:
        while True:
            job = await store.info(job_id)
            line = meter.line(job)
            loop_time = asyncio.get_running_loop().time()
            if tty:
                click.echo("\r" + line, nl=False, err=True)
            elif loop_time - last_print >= 5 or job.finished:
                click.echo(line, err=True)
                last_print = loop_time
            if engine_task is not None:
                await asyncio.wait({engine_task}, timeout=POLL_SECONDS)
                if engine_task.done():
                    engine_task.result()
                    job = await store.info(job_id)
                    break
            elif job.complete:
                break
            else:
                await asyncio.sleep(POLL_SECONDS)
        if tty:
            click.echo("\r" + meter.line(job), err=True)
        return job
    finally:
        await client.aclose()


async def list_jobs(settings: Settings, exchanges: tuple[str, ...]) -> list[JobInfo]:
    client = aioredis.from_url(settings.redis_url)
    try:
        store = JobStore(client)
        return [job for exchange in exchanges for job in await store.jobs(exchange)]
    finally:
        await client.aclose()


async def run_local(settings: Settings, job_id: str) -> JobInfo:
    engine = BackfillEngine(settings, job_id)
    task = asyncio.create_task(engine.run())
    await watch(settings, job_id, task)
    return await task


def report(job: JobInfo) -> None:
    start, end = ms_to_datetime(job.start_ms), ms_to_datetime(job.end_ms)
    click.echo(
        f"job {job.id}: {job.exchange} {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC, "
        f"{len(job.symbols)} market(s): {job.done:,} requests done, {job.failed:,} failed, "
        f"{job.candles:,} candles written{', aggregates refreshed' if job.refreshed else ''}"
    )
    if job.failed:
        click.echo(f"warning: {job.failed} request(s) failed for good; see the ohlcvs_errors table", err=True)


@click.group()
def cli() -> None:
    """Backfill 1-minute candles over the exchanges' REST APIs."""


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
@click.option("--start", required=True, help="ISO date/time, UTC if no zone (inclusive)")
@click.option("--end", required=True, help="ISO date/time, UTC if no zone (exclusive)")
@click.option("--symbols", help="comma-separated BASE/QUOTE or exchange symbols (default: all trading)")
@click.option("--wait", is_flag=True, help="show live progress until the job is done")
@click.option("--local", is_flag=True, help="run the job in this process, no Celery worker needed")
def fetch(exchange: str, start: str, end: str, symbols: str | None, wait: bool, local: bool) -> None:
    """Fetch candles for [start, end)."""
    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    exchange = exchange_or_exit(exchange)
    start_at, end_at = parse_time(start, "--start"), parse_time(end, "--end")
    workers = [] if local else require_workers(exchange)
    job = run_async(create_job(settings, exchange, start_at, end_at, split_symbols(symbols)))
    click.echo(f"job {job.id}: {job.total:,} requests for {len(job.symbols)} market(s) planned", err=True)
    if local:
        job = run_async(run_local(settings, job.id))
        report(job)
        return
    enqueue(exchange, job.id, len(workers))
    click.echo(job.id)
    if wait:
        report(run_async(watch(settings, job.id)))


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
@click.option("--wait", is_flag=True, help="show live progress until the jobs are done")
@click.option("--local", is_flag=True, help="run the jobs in this process, no Celery worker needed")
def resume(exchange: str, wait: bool, local: bool) -> None:
    """Continue every unfinished job of an exchange (after a crash or kill)."""
    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    exchange = exchange_or_exit(exchange)

    jobs = [job for job in run_async(list_jobs(settings, (exchange,))) if not job.complete]
    if not jobs:
        click.echo(f"no unfinished {exchange} jobs")
        return
    workers = [] if local else require_workers(exchange)
    for job in jobs:
        click.echo(f"resuming job {job.id}: {job.total - job.done - job.failed:,} request(s) left", err=True)
        if local:
            report(run_async(run_local(settings, job.id)))
        else:
            enqueue(exchange, job.id, len(workers))
            click.echo(job.id)
            if wait:
                report(run_async(watch(settings, job.id)))


@cli.command()
@click.option("--exchange", help="only this exchange")
def status(exchange: str | None) -> None:
    """List backfill jobs and how far they got."""
    settings = load_settings_or_exit()
    names = EXCHANGES
    if exchange:
        names = (exchange_or_exit(exchange),)

    jobs = run_async(list_jobs(settings, names))
    if not jobs:
        click.echo("no backfill jobs")
        return
    click.echo(
        f"{'job':12}  {'exchange':8}  {'range (UTC)':33}  {'requests':>15}  "
        f"{'failed':>6}  {'candles':>12}  state"
    )
    for job in sorted(jobs, key=lambda j: j.created_ms):
        start, end = ms_to_datetime(job.start_ms), ms_to_datetime(job.end_ms)
        state = (
            ("done" if job.refreshed else "refreshing")
            if job.finished
            else ("running" if job.in_flight else "queued")
        )
        click.echo(
            f"{job.id:12}  {job.exchange:8}  {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}  "
            f"{job.done + job.failed:>7,}/{job.total:<7,}  {job.failed:>6,}  {job.candles:>12,}  {state}"
        )


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
def markets(exchange: str) -> None:
    """Refresh symbol_exchange from the exchange's market list."""
    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    exchange = exchange_or_exit(exchange)
    result = run_async(refresh_markets(settings, exchange))
    click.echo(
        f"{result.exchange}: {result.listed} markets listed, {result.trading} trading, "
        f"{result.changed} rows changed"
    )


if __name__ == "__main__":
    cli()
