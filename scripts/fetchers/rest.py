"""Historical backfill over the exchanges' REST APIs.

    python -m scripts.fetchers.rest fetch --exchange bitfinex \
        --start 2021-01-01T00:00:00 --end 2021-01-02T00:00:00
    python -m scripts.fetchers.rest resume --exchange bitfinex [--job ID]
    python -m scripts.fetchers.rest status [--job ID]
    python -m scripts.fetchers.rest cancel --job ID
    python -m scripts.fetchers.rest markets --exchange binance
    python -m scripts.fetchers.rest repair [--exchange bitfinex] [--since 2021-01-01] [--wait]

Times without a zone are UTC and must be on a whole minute; the range is half-open [start, end) and
ends at the latest at the exchange's present (asked of the exchange, not this machine's clock).
Without --local the job is queued for Celery workers on the `<exchange>_rest` queue; --wait shows
its progress live. Exit codes: 0 done (or queued, without --wait), 1 a service failed or the job
left requests failed for good (recorded in ohlcvs_errors; the incomplete ranges are listed),
2 bad input.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import click

from common.exchanges import EXCHANGES
from common.logging_setup import setup_logging
from common.settings import Settings, load_settings_or_exit
from common.timeutil import MINUTE_MS, datetime_to_ms, ms_to_datetime, parse_utc
from scripts.cli import EXIT_FAILED, EXIT_USAGE, fail

if TYPE_CHECKING:
    from fetchers.rest.job_store import JobInfo

# The engine, Redis, PostgreSQL and HTTP clients are imported where a command needs them, so that
# `--help` and bad input cost no more than click and the settings (see benchmarks/backfill.py).

POLL_SECONDS = 0.5


def exchange_or_exit(name: str) -> str:
    from fetchers.rest.jobs import BackfillRequestError, check_exchange

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
    """Run a coroutine; bad input becomes exit code 2, service failures one line and exit code 1."""
    import psycopg2
    import redis

    from common.db import DatabaseError
    from fetchers.rest.engine import run
    from fetchers.rest.exchange_clock import ExchangeClockUnavailable
    from fetchers.rest.jobs import BackfillRequestError
    from fetchers.rest.markets import MarketsUnavailable

    try:
        return run(coro)
    except BackfillRequestError as error:
        fail(str(error), EXIT_USAGE)
    except (DatabaseError, MarketsUnavailable, ExchangeClockUnavailable) as error:
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
    """Show progress until the job is finished and its aggregates are refreshed. On a terminal one
    line redrawn in place (log lines go above it); otherwise a line every few seconds, and the
    last line once the job has finished (a log's reader sees how it ended)."""
    from common.redis_clients import async_client
    from fetchers.rest.job_store import JobStore
    from fetchers.rest.progress import ProgressMeter, ProgressStream

    client = async_client(settings, ride_out_outages=True)
    store = JobStore(client)
    meter = ProgressMeter(settings.rest_rate_window_seconds)
    stream = ProgressStream(sys.stderr)
    last_print = -1e9
    shown_end: tuple[bool, bool] | None = None  # (finished, refreshed) of the last line written
    try:
        with stream.capturing_logs():
            while True:
                job = await store.info(job_id)
                line = meter.line(job)
                loop_time = asyncio.get_running_loop().time()
                if stream.tty:
                    stream.show(line)
                elif (loop_time - last_print >= 5 and not job.finished) or (
                    job.finished and shown_end != (job.finished, job.refreshed)
                ):
                    stream.write(line + "\n")
                    last_print = loop_time
                    shown_end = (job.finished, job.refreshed) if job.finished else None
                if engine_task is not None:
                    await asyncio.wait({engine_task}, timeout=POLL_SECONDS)
                    if engine_task.done():
                        engine_task.result()
                        job = await store.info(job_id)
                        break
                elif job.complete or job.cancelled:
                    break
                else:
                    await asyncio.sleep(POLL_SECONDS)
            if stream.tty:
                stream.show(meter.line(job))
                stream.done()
            elif shown_end != (job.finished, job.refreshed):
                stream.write(meter.line(job) + "\n")
        return job
    finally:
        await client.aclose()


async def list_jobs(
    settings: Settings, exchanges: tuple[str, ...], job_id: str | None = None
) -> list[JobInfo]:
    """Jobs of these exchanges that write to this database, oldest first (or the one job)."""
    from common.redis_clients import async_client
    from fetchers.rest.job_store import JobStore, job_scope
    from fetchers.rest.jobs import BackfillRequestError

    client = async_client(settings)
    try:
        store = JobStore(client, job_scope(settings))
        if job_id is not None:
            try:
                return [await store.info(job_id)]
            except KeyError:
                raise BackfillRequestError(f"no backfill job {job_id!r} (see: status)") from None
        return [job for exchange in exchanges for job in await store.jobs(exchange)]
    finally:
        await client.aclose()


async def failed_tasks(settings: Settings, job_id: str):
    from common.redis_clients import async_client
    from fetchers.rest.job_store import JobStore

    client = async_client(settings)
    try:
        return await JobStore(client).failed_tasks(job_id)
    finally:
        await client.aclose()


async def run_local(settings: Settings, job_id: str) -> JobInfo:
    from fetchers.rest.engine import BackfillEngine

    engine = BackfillEngine(settings, job_id)
    task = asyncio.create_task(engine.run())
    try:
        await watch(settings, job_id, task)
    except BaseException:
        # Redis gone past REST_OUTAGE_SECONDS stops the progress line first: stop the engine too
        # and take its error (the same outage), or it would end as a traceback at exit.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    return await task


def span(start_ms: int, end_ms: int) -> str:
    return f"{ms_to_datetime(start_ms):%Y-%m-%d %H:%M} .. {ms_to_datetime(end_ms):%Y-%m-%d %H:%M}"


def warn_outside_history(settings: Settings, job: JobInfo) -> None:
    """Fewer candles than minutes: say where the exchange's history starts when the job asked for
    minutes before it (naming the first available minute), and say so when nothing was found."""
    from fetchers.rest.engine import run
    from fetchers.rest.history import first_available_minutes

    try:
        firsts = run(first_available_minutes(settings, job.exchange, job.symbols))
    except Exception as error:  # noqa: BLE001 - advice only: the job's outcome stands
        click.echo(f"note: could not ask where the exchange's history starts: {error}", err=True)
        firsts = {}
    late = {symbol: first for symbol, first in firsts.items() if first is not None and first > job.start_ms}
    for symbol, first in late.items():
        click.echo(
            f"warning: {job.exchange} {symbol}: the exchange's history starts at "
            f"{ms_to_datetime(first):%Y-%m-%d %H:%M} UTC (first available minute); nothing before it "
            f"was stored for {span(job.start_ms, job.end_ms)} UTC",
            err=True,
        )
    if job.candles == 0 and not late:
        click.echo(
            f"warning: the exchange has no candles for these markets in {span(job.start_ms, job.end_ms)} UTC "
            "(before their listing, or outside the history it serves)",
            err=True,
        )


def report(settings: Settings, job: JobInfo) -> int:
    """Print the job's outcome; returns the exit code (1 if any request failed for good)."""
    files = ""
    if job.archive:
        files = f" ({job.archive:,} archive files, {job.archive_fallbacks:,} of them sent to REST)"
    click.echo(
        f"job {job.id}: {job.exchange} {span(job.start_ms, job.end_ms)} UTC, "
        f"{len(job.symbols)} market(s): {job.done:,} requests done{files}, {job.failed:,} failed, "
        f"{job.candles:,} candles written{', aggregates refreshed' if job.refreshed else ''}"
    )
    if (
        job.finished
        and job.done
        and job.candles < len(job.symbols) * (job.end_ms - job.start_ms) // MINUTE_MS
    ):
        warn_outside_history(settings, job)
    if not job.failed:
        return 0
    tasks = run_async(failed_tasks(settings, job.id))
    click.echo(
        f"error: {job.failed} request(s) failed for good (see the ohlcvs_errors table); "
        "these markets and ranges are incomplete:",
        err=True,
    )
    for task in tasks:
        click.echo(f"  {task.symbol}  {span(task.start_ms, task.end_ms)} UTC", err=True)
    return EXIT_FAILED


@click.group()
def cli() -> None:
    """Backfill 1-minute candles over the exchanges' REST APIs."""


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
@click.option("--start", required=True, help="ISO date/time on a whole minute, UTC if no zone (inclusive)")
@click.option("--end", required=True, help="ISO date/time on a whole minute, UTC if no zone (exclusive)")
@click.option("--symbols", help="comma-separated BASE/QUOTE or exchange symbols (default: all trading)")
@click.option("--wait", is_flag=True, help="show live progress until the job is done")
@click.option("--local", is_flag=True, help="run the job in this process, no Celery worker needed")
@click.option(
    "--source",
    type=click.Choice(["auto", "rest", "archive"]),
    help="auto: closed days from Binance's public archive files, the rest over REST; rest: REST only; "
    "archive: files only (default: the BACKFILL_SOURCE setting, auto)",
)
def fetch(
    exchange: str, start: str, end: str, symbols: str | None, wait: bool, local: bool, source: str | None
) -> None:
    """Fetch candles for [start, end). Exit 1 if any request failed for good (the incomplete
    markets and ranges are listed). Binance history of closed days comes from its public archive
    (a file per month or day, checksum verified, no REST weight) unless --source rest; a file that
    is missing or fails its checksum is fetched over REST instead."""
    from fetchers.rest.jobs import BackfillRequestError, create_job, exchange_now, validate_range

    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    exchange = exchange_or_exit(exchange)
    start_at, end_at = parse_time(start, "--start"), parse_time(end, "--end")
    try:
        validate_range(start_at, end_at, None)  # bad input first, before any service is asked
        now = run_async(exchange_now(settings, exchange))
        validate_range(start_at, end_at, now)
    except BackfillRequestError as error:
        fail(str(error), EXIT_USAGE)
    workers = [] if local else require_workers(exchange)
    job = run_async(create_job(settings, exchange, start_at, end_at, split_symbols(symbols), now, source))
    files = f" ({job.archive:,} of them archive files)" if job.archive else ""
    click.echo(
        f"job {job.id}: {job.total:,} requests{files} for {len(job.symbols)} market(s) planned", err=True
    )
    if local:
        sys.exit(report(settings, run_async(run_local(settings, job.id))))
    enqueue(exchange, job.id, len(workers))
    click.echo(job.id)
    if wait:
        sys.exit(report(settings, run_async(watch(settings, job.id))))


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
@click.option("--job", "job_id", help="only this job (default: every unfinished job, oldest first)")
@click.option("--wait", is_flag=True, help="show live progress until the jobs are done")
@click.option("--local", is_flag=True, help="run the jobs in this process, no Celery worker needed")
def resume(exchange: str, job_id: str | None, wait: bool, local: bool) -> None:
    """Continue unfinished jobs of an exchange (after a crash or kill); cancelled ones stay so."""
    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    exchange = exchange_or_exit(exchange)

    jobs = [job for job in run_async(list_jobs(settings, (exchange,), job_id)) if job.resumable]
    if job_id is not None and jobs and jobs[0].exchange != exchange:
        fail(f"job {job_id} is a {jobs[0].exchange} job, not {exchange}", EXIT_USAGE)
    if not jobs:
        click.echo(f"no unfinished {exchange} jobs" if job_id is None else f"job {job_id} has nothing left")
        return
    workers = [] if local else require_workers(exchange)
    click.echo(f"resuming {len(jobs)} job(s), oldest first:", err=True)
    for job in jobs:
        click.echo(
            f"  {job.id}  {span(job.start_ms, job.end_ms)} UTC  {job.left:,} request(s) left", err=True
        )
    code = 0
    for job in jobs:
        click.echo(f"resuming job {job.id}: {job.left:,} request(s) left", err=True)
        if local:
            code = max(code, report(settings, run_async(run_local(settings, job.id))))
        else:
            enqueue(exchange, job.id, len(workers))
            click.echo(job.id)
            if wait:
                code = max(code, report(settings, run_async(watch(settings, job.id))))
    sys.exit(code)


@cli.command()
@click.option("--job", "job_id", required=True, help="the job to cancel (see: status)")
def cancel(job_id: str) -> None:
    """Drop a job's queued requests; requests in flight finish, `resume` leaves it alone."""
    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    (job,) = run_async(list_jobs(settings, EXCHANGES, job_id))

    async def go() -> int:
        from common.redis_clients import async_client
        from fetchers.rest.job_store import JobStore

        client = async_client(settings)
        try:
            return await JobStore(client).cancel(job.id)
        finally:
            await client.aclose()

    dropped = run_async(go())
    click.echo(f"job {job.id}: cancelled, {dropped:,} queued request(s) dropped")


@cli.command()
@click.option("--exchange", help="only this exchange")
@click.option("--job", "job_id", help="only this job")
def status(exchange: str | None, job_id: str | None) -> None:
    """List backfill jobs (of this database) and how far they got. `kind` tells a user's backfill from
    the automatic repair (a low-priority job). `interrupted` means requests are left but every worker
    that took part is gone: run `resume` (an interrupted repair is carried on by the next repair run)."""
    settings = load_settings_or_exit()
    names = EXCHANGES
    if exchange:
        names = (exchange_or_exit(exchange),)

    jobs = run_async(list_jobs(settings, names, job_id))
    if not jobs:
        click.echo("no backfill jobs")
        return
    header = ("job", "exchange", "kind", "range (UTC)", "requests", "left", "failed", "candles", "state")
    rows = [
        (
            job.id,
            job.exchange,
            job_kind(job),
            span(job.start_ms, job.end_ms),
            f"{job.done + job.failed:,}/{job.total:,}",
            f"{job.left:,}",
            f"{job.failed:,}",
            f"{job.candles:,}",
            job.state,
        )
        for job in sorted(jobs, key=lambda j: j.created_ms)
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    right = {4, 5, 6, 7}
    for row in (header, *rows):
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(cells).rstrip())


def job_kind(job: JobInfo) -> str:
    """`repair` for the automatic repair's jobs (the only low-priority ones), else `backfill`."""
    from fetchers.rest.rate_limiter import LOW

    return "repair" if job.priority == LOW else "backfill"


def enqueue_repair(exchange: str) -> None:
    from celery_app.celery_config import REST_QUEUES
    from celery_app.celery_tasks import repair_gaps

    repair_gaps.apply_async(args=(exchange,), queue=REST_QUEUES[exchange])


@cli.command()
@click.option("--exchange", help="only this exchange (default: every exchange)")
@click.option("--since", help="only gaps from this ISO date/time on (default: each market's first bar)")
@click.option("--wait", is_flag=True, help="show live progress until the repair is done")
@click.option("--local", is_flag=True, help="run the repair in this process, no Celery worker needed")
def repair(exchange: str | None, since: str | None, wait: bool, local: bool) -> None:
    """Find the minutes missing from each market's history (not covered by a REST fetch or an
    uninterrupted live feed, recorded outages, failed requests) and backfill them at low priority:
    the repair uses only the rate budget user backfills leave free. The beat task does the same
    every REPAIR_INTERVAL_SECONDS. Exit 1 if a repair request failed for good."""
    from fetchers.rest.repair import submit_repair

    settings = load_settings_or_exit()
    setup_logging("rest_fetch", console_level="WARNING")
    names = (exchange_or_exit(exchange),) if exchange else EXCHANGES
    since_ms = datetime_to_ms(parse_time(since, "--since")) if since else 0
    code = 0
    for name in names:
        if not local:
            require_workers(name)
        submission = run_async(submit_repair(settings, name, since_ms))
        plan, job = submission.plan, submission.job
        if plan is not None:
            click.echo(
                f"{name}: {plan.missing_minutes:,} missing minute(s) in {len(plan.gaps)} market(s) "
                f"up to {ms_to_datetime(plan.until_ms):%Y-%m-%d %H:%M} UTC",
                err=True,
            )
        if job is None:
            click.echo(f"{name}: nothing to repair")
            continue
        if submission.new:
            click.echo(f"job {job.id}: {job.total:,} repair requests planned (low priority)", err=True)
        else:
            click.echo(f"job {job.id}: the repair under way goes on, {job.left:,} request(s) left", err=True)
        if local:
            code = max(code, report(settings, run_async(run_local(settings, job.id))))
            continue
        enqueue_repair(name)
        click.echo(job.id)
        if wait:
            code = max(code, report(settings, run_async(watch(settings, job.id))))
    sys.exit(code)


@cli.command()
@click.option("--exchange", required=True, help=f"one of {', '.join(EXCHANGES)}")
def markets(exchange: str) -> None:
    """Refresh symbol_exchange from the exchange's market list."""
    from fetchers.rest.markets import refresh_markets

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
