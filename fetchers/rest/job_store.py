"""Durable backfill jobs in Redis: nothing lost on a crash, nothing repeated needlessly.

A job's planned requests sit in a pending list. A worker claims one atomically (it moves to the
in-flight hash, tagged with the worker's id) and completes it only after the database has
committed its candles. Workers keep a heartbeat key alive; `requeue_orphans` (run by `resume` and
by every worker at start) returns the in-flight requests of workers whose heartbeat has expired —
a `kill -9` loses nothing, and requests of live workers are left alone.
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

HEARTBEAT_TTL_SECONDS = 6
REFRESH_LEASE_SECONDS = 900
PUSH_CHUNK = 1000

_CLAIM = """
local raw = redis.call('LPOP', KEYS[1])
if not raw then return false end
redis.call('HSET', KEYS[2], raw, ARGV[1])
return raw
"""

_COMPLETE = """
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[1], 'candles', tonumber(ARGV[3]))
return 1
"""

_REQUEUE_ORPHANS = """
local entries = redis.call('HGETALL', KEYS[2])
local moved = 0
for i = 1, #entries, 2 do
  local raw = entries[i]
  local worker = entries[i + 1]
  if redis.call('EXISTS', ARGV[1] .. worker) == 0 then
    redis.call('LPUSH', KEYS[1], raw)
    redis.call('HDEL', KEYS[2], raw)
    moved = moved + 1
  end
end
return moved
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A request this worker owns until `complete`; `token` is its exact queue entry."""

    task: FetchTask
    token: bytes


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

    @property
    def finished(self) -> bool:
        """Every request is done or failed for good."""
        return self.done + self.failed >= self.total

    @property
    def complete(self) -> bool:
        """Finished and its aggregates refreshed: nothing left for `resume`."""
        return self.finished and self.refreshed

    def as_dict(self) -> dict:
        return asdict(self)


class JobStore:
    """All job state lives here; keys are `cfr:backfill:*` (internal, not a public interface)."""

    def __init__(self, client: aioredis.Redis):
        self.client = client
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._requeue = client.register_script(_REQUEUE_ORPHANS)
        self.owner_token = uuid.uuid4().hex

    @staticmethod
    def _keys(job_id: str) -> tuple[str, str, str]:
        return (
            backfill_key("job", job_id),
            backfill_key("job", job_id, "pending"),
            backfill_key("job", job_id, "inflight"),
        )

    async def create(
        self,
        exchange: str,
        start_ms: int,
        end_ms: int,
        symbols: list[str],
        tasks: Iterable[FetchTask],
        limit_per_minute: float = 0.0,
    ) -> JobInfo:
        """Store a new job and its planned requests; returns its info (id is a short uuid)."""
        job_id = uuid.uuid4().hex[:12]
        meta, pending, _ = self._keys(job_id)
        total = 0
        chunk: list[str] = []
        for task in tasks:
            chunk.append(json.dumps(task.to_dict(), separators=(",", ":")))
            total += 1
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
        )

    async def job_ids(self, exchange: str) -> list[str]:
        return [j.decode() for j in await self.client.zrange(backfill_key("jobs", exchange), 0, -1)]

    async def jobs(self, exchange: str) -> list[JobInfo]:
        """The exchange's jobs, oldest first."""
        return [await self.info(job_id) for job_id in await self.job_ids(exchange)]

    async def heartbeat(self, worker_id: str) -> None:
        await self.client.set(backfill_key("worker", worker_id), 1, ex=HEARTBEAT_TTL_SECONDS)

    async def retire(self, worker_id: str) -> None:
        await self.client.delete(backfill_key("worker", worker_id))

    async def claim(self, job_id: str, worker_id: str) -> Claim | None:
        _, pending, inflight = self._keys(job_id)
        raw = await self._claim(keys=[pending, inflight], args=[worker_id])
        if raw is None:
            return None
        return Claim(FetchTask.from_dict(json.loads(raw)), raw)

    async def complete(self, job_id: str, claim: Claim, candles: int, failed: bool = False) -> bool:
        """Mark a claimed request finished (after its candles are committed, or its failure
        recorded). Returns False if it was no longer ours (already requeued)."""
        meta, _, inflight = self._keys(job_id)
        done = await self._complete(
            keys=[meta, inflight], args=[claim.token, "failed" if failed else "done", candles]
        )
        return bool(done)

    async def requeue_orphans(self, job_id: str) -> int:
        """Return in-flight requests of dead workers to the front of the queue."""
        _, pending, inflight = self._keys(job_id)
        return int(await self._requeue(keys=[pending, inflight], args=[backfill_key("worker", "")]))

    async def claim_refresh(self, job_id: str) -> bool:
        """True for the single caller that should refresh the finished job's aggregates. The claim
        is a lease: if that caller dies before `mark_refreshed`, a later `resume` takes it over."""
        meta, _, _ = self._keys(job_id)
        lease = backfill_key("job", job_id, "refresh-lease")
        if not await self.client.set(lease, self.owner_token, nx=True, ex=REFRESH_LEASE_SECONDS):
            return False
        if int(await self.client.hget(meta, "finished_ms") or 0) == 0:
            await self.client.hset(meta, "finished_ms", int(time.time() * 1000))
        return True

    async def mark_refreshed(self, job_id: str) -> None:
        meta, _, _ = self._keys(job_id)
        await self.client.hset(meta, "refreshed", 1)
