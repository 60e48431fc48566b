"""Durable backfill jobs in Redis: nothing lost on a crash, nothing repeated needlessly.

A job's planned requests sit in a pending list. A worker claims one atomically (it moves to the
in-flight hash, tagged with the worker's id) and completes it only after the database has
committed its candles. Workers keep a heartbeat key alive; `requeue_orphans` (run by `resume` and
by every worker at start) returns the in-flight requests of workers whose heartbeat has expired —
a `kill -9` loses nothing, and requests of live workers are left alone. The refresh of a finished
job's aggregates is claimed the same way: it passes to another worker once its own is gone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from common.redis_keys import backfill_key
from fetchers.exchanges.base import FetchTask
from fetchers.rest.rate_limiter import GATE_LUA, SharedRateLimiter

HEARTBEAT_TTL_SECONDS = 6
REFRESH_LEASE_SECONDS = 900
PUSH_CHUNK = 1000

_CLAIM = """
local raw = redis.call('LPOP', KEYS[1])
if not raw then return false end
redis.call('HSET', KEYS[2], raw, ARGV[1])
return raw
"""

_CLAIM_AND_GATE = (
    GATE_LUA
    + """
local raw = redis.call('LPOP', KEYS[1])
if not raw then return false end
redis.call('HSET', KEYS[2], raw, ARGV[1])
return {raw, gate({KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, {ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]})}
"""
)

_COMPLETE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[2] == 'failed' then redis.call('RPUSH', KEYS[3], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'candles', tonumber(ARGV[3]))
return 1
"""

_REPLACE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'cancelled') ~= '1' then
  for i = 2, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('HINCRBY', KEYS[1], 'total', #ARGV - 1)
end
redis.call('HINCRBY', KEYS[1], 'done', 1)
redis.call('HINCRBY', KEYS[1], 'archive_fallbacks', 1)
return 1
"""

_COMPLETE_DONE = """
local completed = 0
local candles = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    completed = completed + 1
    candles = candles + tonumber(ARGV[i + 1])
  end
end
if completed > 0 then
  redis.call('HINCRBY', KEYS[1], 'done', completed)
  redis.call('HINCRBY', KEYS[1], 'candles', candles)
end
return completed
"""

_REQUEUE_ORPHANS = """
local entries = redis.call('HGETALL', KEYS[2])
local moved = 0
for i = 1, #entries, 2 do
  local raw = entries[i]
  local worker = entries[i + 1]
  if redis.call('EXISTS', ARGV[1] .. worker) == 0 or worker == ARGV[2] then
    redis.call('LPUSH', KEYS[1], raw)
    redis.call('HDEL', KEYS[2], raw)
    moved = moved + 1
  end
end
return moved
"""


_CLAIM_REFRESH = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. holder) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A request this worker owns until `complete`; `token` is its exact queue entry."""

    task: FetchTask
    token: bytes
    gate_wait_us: int | None = None
    """With `claim(..., gate=)`: the rate limiter's first answer for this request (see `acquire`)."""


class JobState:
    """What `status` shows for a job."""

    QUEUED = "queued"  # no worker has started on it yet
    RUNNING = "running"  # at least one live worker
    INTERRUPTED = "interrupted"  # requests left, but every worker that took part is gone
    REFRESHING = "refreshing"  # every request done; the aggregates are being refreshed
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class JobInfo:
    """What a job is and how far it got (counts are requests, plus candles written)."""

    id: str
    exchange: str
    start_ms: int
    end_ms: int
    symbols: list[str]
    total: int
    done: int = 0
    failed: int = 0
    candles: int = 0
    pending: int = 0
    in_flight: int = 0
    created_ms: int = 0
    finished_ms: int = 0
    limit_per_minute: float = 0.0
    refreshed: bool = False
    cancelled: bool = False
    sent: int = 0
    """HTTP requests sent so far, retries included (updated every few seconds)."""
    workers_seen: int = 0
    workers_live: int = 0
    priority: str = "high"
    """`high` for user backfills; `low` for the automatic repair (uses only the budget left free)."""
    source: str = "rest"
    """Where the job was planned to take history from: `rest`, `auto` or `archive` (sources.py)."""
    archive: int = 0
    """Archive files planned (each counted as one request)."""
    archive_fallbacks: int = 0
    """Archive files that failed and whose ranges were queued as REST requests instead."""

    @property
    def finished(self) -> bool:
        """Every request is done or failed for good."""
        return self.done + self.failed >= self.total

    @property
    def complete(self) -> bool:
        """Finished and its aggregates refreshed: nothing left for `resume`."""
        return self.finished and self.refreshed

    @property
    def left(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def resumable(self) -> bool:
        return not self.complete and not self.cancelled

    @property
    def state(self) -> str:
        if self.cancelled and not self.finished:
            return JobState.CANCELLED
        if self.finished:
            return JobState.DONE if self.refreshed else JobState.REFRESHING
        if self.workers_live:
            return JobState.RUNNING
        return JobState.INTERRUPTED if self.workers_seen else JobState.QUEUED

    def as_dict(self) -> dict:
        return asdict(self)


def job_scope(settings) -> str:
    """The database a job writes to, as host:port/name."""
    return f"{settings.postgres_host}:{settings.postgres_port}/{settings.postgres_db}"


class JobStore:
    """All job state lives here; keys are `cfr:backfill:*` (internal, not a public interface)."""

    def __init__(self, client: aioredis.Redis, scope: str = ""):
        """`scope` names the database the jobs write to (see `job_scope`): jobs of other databases
        sharing this Redis are not listed."""
        self.client = client
        self.scope = scope
        self._claim = client.register_script(_CLAIM)
        self._claim_and_gate = client.register_script(_CLAIM_AND_GATE)
        self._complete = client.register_script(_COMPLETE)
        self._complete_done = client.register_script(_COMPLETE_DONE)
        self._replace = client.register_script(_REPLACE)
        self._requeue = client.register_script(_REQUEUE_ORPHANS)
        self._claim_refresh = client.register_script(_CLAIM_REFRESH)

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str]:
        return (
            backfill_key("job", job_id),
            backfill_key("job", job_id, "pending"),
            backfill_key("job", job_id, "inflight"),
        )

    @staticmethod
    def _workers_key(job_id: str) -> str:
        return backfill_key("job", job_id, "workers")

    @staticmethod
    def _failed_key(job_id: str) -> str:
        return backfill_key("job", job_id, "failed")

    async def create(
        self,
        exchange: str,
        start_ms: int,
        end_ms: int,
        symbols: list[str],
        tasks: Iterable[FetchTask],
        limit_per_minute: float = 0.0,
        priority: str = "high",
        source: str = "rest",
    ) -> JobInfo:
        """Store a new job and its planned requests; returns its info (id is a short uuid)."""
        job_id = uuid.uuid4().hex[:12]
        meta, pending, _ = self._keys(job_id)
        total = archive = 0
        chunk: list[str] = []
        for task in tasks:
            chunk.append(json.dumps(task.to_dict(), separators=(",", ":")))
            total += 1
            archive += bool(task.archive)
            if len(chunk) >= PUSH_CHUNK:
                await self.client.rpush(pending, *chunk)
                chunk.clear()
        if chunk:
            await self.client.rpush(pending, *chunk)
        now = int(time.time() * 1000)
        await self.client.hset(
            meta,
            mapping={
                "id": job_id,
                "exchange": exchange,
                "start_ms": start_ms,
                "end_ms": end_ms,
                "symbols": json.dumps(symbols),
                "total": total,
                "done": 0,
                "failed": 0,
                "candles": 0,
                "created_ms": now,
                "finished_ms": 0,
                "limit_per_minute": limit_per_minute,
                "refreshed": 0,
                "scope": self.scope,
                "priority": priority,
                "source": source,
                "archive": archive,
            },
        )
        await self.client.zadd(backfill_key("jobs", exchange), {job_id: now})
        return await self.info(job_id)

    async def info(self, job_id: str) -> JobInfo:
        meta, pending, inflight = self._keys(job_id)
        raw = await self.client.hgetall(meta)
        if not raw:
            raise KeyError(f"no backfill job {job_id!r}")
        data = {k.decode(): v.decode() for k, v in raw.items()}
        workers = await self.client.smembers(self._workers_key(job_id))
        live = 0
        for worker in workers:
            live += await self.client.exists(backfill_key("worker", worker.decode()))
        return JobInfo(
            id=data["id"],
            exchange=data["exchange"],
            start_ms=int(data["start_ms"]),
            end_ms=int(data["end_ms"]),
            symbols=json.loads(data["symbols"]),
            total=int(data["total"]),
            done=int(data["done"]),
            failed=int(data["failed"]),
            candles=int(data["candles"]),
            pending=await self.client.llen(pending),
            in_flight=await self.client.hlen(inflight),
            created_ms=int(data["created_ms"]),
            finished_ms=int(data["finished_ms"]),
            limit_per_minute=float(data.get("limit_per_minute", 0) or 0),
            refreshed=data.get("refreshed") == "1",
            cancelled=data.get("cancelled") == "1",
            sent=int(data.get("sent", 0) or 0),
            workers_seen=len(workers),
            workers_live=live,
            priority=data.get("priority", "high"),
            source=data.get("source", "rest"),
            archive=int(data.get("archive", 0) or 0),
            archive_fallbacks=int(data.get("archive_fallbacks", 0) or 0),
        )

    async def job_ids(self, exchange: str) -> list[str]:
        return [j.decode() for j in await self.client.zrange(backfill_key("jobs", exchange), 0, -1)]

    async def jobs(self, exchange: str) -> list[JobInfo]:
        """The exchange's jobs writing to this store's database, oldest first."""
        found = []
        for job_id in await self.job_ids(exchange):
            scope = await self.client.hget(self._keys(job_id)[0], "scope")
            if scope is not None and scope.decode() == self.scope:
                found.append(await self.info(job_id))
        return found

    async def join(self, job_id: str, worker_id: str) -> None:
        """Record that this worker works on the job (so `status` can tell running from interrupted)."""
        await self.client.sadd(self._workers_key(job_id), worker_id)

    async def failed_tasks(self, job_id: str) -> list[FetchTask]:
        """The requests that failed for good, in the order they failed."""
        raw = await self.client.lrange(self._failed_key(job_id), 0, -1)
        return [FetchTask.from_dict(json.loads(item)) for item in raw]

    async def cancel(self, job_id: str) -> int:
        """Stop a job: its queued requests are dropped (requests in flight finish). Returns how many
        were dropped."""
        meta, pending, _ = self._keys(job_id)
        await self.info(job_id)  # KeyError if there is no such job
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(pending)
            pipe.delete(pending)
            pipe.hset(meta, "cancelled", 1)
            dropped, _, _ = await pipe.execute()
        return int(dropped)

    async def count_sent(self, job_id: str, requests: int) -> None:
        if requests:
            await self.client.hincrby(self._keys(job_id)[0], "sent", requests)

    async def heartbeat(self, worker_id: str) -> None:
        await self.client.set(backfill_key("worker", worker_id), 1, ex=HEARTBEAT_TTL_SECONDS)

    async def retire(self, worker_id: str) -> None:
        await self.client.delete(backfill_key("worker", worker_id))

    async def claim(
        self, job_id: str, worker_id: str, gate: SharedRateLimiter | None = None, weight: int = 1
    ) -> Claim | None:
        """Take the next queued request, or None. With `gate`, the same script also asks that rate
        limiter for a request of `weight` (a pause check, or a reserved slot) only if a request was
        taken: one round trip where there were two; pass `claim.gate_wait_us` to `acquire`."""
        _, pending, inflight = self._keys(job_id)
        if gate is None:
            raw = await self._claim(keys=[pending, inflight], args=[worker_id])
            wait_us = None
        else:
            gate_keys, gate_args = gate.gate_call(weight)
            answer = await self._claim_and_gate(
                keys=[pending, inflight, *gate_keys], args=[worker_id, *gate_args]
            )
            raw, wait_us = (None, None) if answer is None else (answer[0], int(answer[1]))
        if raw is None:
            return None
        return Claim(FetchTask.from_dict(json.loads(raw)), raw, wait_us)

    async def complete(self, job_id: str, claim: Claim, candles: int, failed: bool = False) -> bool:
        """Mark a claimed request finished (after its candles are committed, or its failure
        recorded). Returns False if it was no longer ours (already requeued)."""
        meta, _, inflight = self._keys(job_id)
        done = await self._complete(
            keys=[meta, inflight, self._failed_key(job_id)],
            args=[claim.token, "failed" if failed else "done", candles],
        )
        return bool(done)

    async def replace(self, job_id: str, claim: Claim, tasks: list[FetchTask]) -> bool:
        """Complete a claimed request by queueing `tasks` in its place, in one step (a crash leaves
        either the claim, to be re-queued, or the new requests: never both, never neither): how an
        archive file that failed hands its range to REST. A cancelled job queues nothing more.
        False if the claim was no longer ours."""
        meta, pending, inflight = self._keys(job_id)
        entries = [json.dumps(t.to_dict(), separators=(",", ":")) for t in tasks]
        done = await self._replace(keys=[meta, inflight, pending], args=[claim.token, *entries])
        return bool(done)

    async def complete_done(self, job_id: str, written: list[tuple[Claim, int]]) -> int:
        """`complete` for many requests whose candles one transaction committed, in one round trip.
        Returns how many were still ours."""
        if not written:
            return 0
        meta, _, inflight = self._keys(job_id)
        args = [value for claim, candles in written for value in (claim.token, candles)]
        return int(await self._complete_done(keys=[meta, inflight], args=args))

    async def requeue_orphans(self, job_id: str, idle_worker: str = "") -> int:
        """Return in-flight requests of dead workers to the front of the queue; with `idle_worker`,
        also that worker's (it has no request in hand, so any claim under its name is one whose
        reply was lost in a Redis outage)."""
        _, pending, inflight = self._keys(job_id)
        args = [backfill_key("worker", ""), idle_worker or "\x00"]
        return int(await self._requeue(keys=[pending, inflight], args=args))

    async def claim_refresh(self, job_id: str, worker_id: str) -> bool:
        """True for the single worker that should refresh the finished job's aggregates. The claim
        lasts while the worker's heartbeat does, like its requests: a worker killed mid-refresh
        leaves it to the next engine that runs the job (and `REFRESH_LEASE_SECONDS` bounds a worker
        that beats but never finishes)."""
        meta, _, _ = self._keys(job_id)
        lease = backfill_key("job", job_id, "refresh-lease")
        args = [worker_id, backfill_key("worker", ""), REFRESH_LEASE_SECONDS]
        if not await self._claim_refresh(keys=[lease], args=args):
            return False
        if int(await self.client.hget(meta, "finished_ms") or 0) == 0:
            await self.client.hset(meta, "finished_ms", int(time.time() * 1000))
        return True

    async def mark_refreshed(self, job_id: str) -> None:
        meta, _, _ = self._keys(job_id)
        await self.client.hset(meta, "refreshed", 1)
