"""The Redis layout shared by the API and the workers, and the API's (async) access to it.

Per job, each with the result time to live:

* ``{p}:job:{id}`` hash: status, params (JSON), seed, model, weights_sha256, step, total,
  created_at / started_at / finished_at, error, attempts, cancel, heartbeat_at, worker;
* ``{p}:events:{id}`` stream: entries ``event`` (type) and ``data`` (JSON), ids used as SSE ids;
* ``{p}:png:{id}``, ``{p}:gif:{id}``: the results.

Shared: ``{p}:queue`` (sorted set of queued ids by submission time, for queue positions),
``{p}:running`` (set of running ids, for recovering jobs of dead workers) and ``{p}:workers``
(sorted set of worker names by last heartbeat, for ``/readyz``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
WORKER_FRESH_S = 15.0

# KEYS[1] job hash; ARGV: new status, now, stale-after seconds, n allowed, allowed..., field, value, ...
# 'running' in the allowed list matches only when the job's heartbeat is older than stale-after.
# Returns 1 on success, 0 when the status did not allow it, -1 when the job does not exist.
TRANSITION_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
local now = tonumber(ARGV[2])
local stale = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local ok = false
for i = 5, 4 + count do
  if ARGV[i] == status then
    if status == 'running' then
      local beat = tonumber(redis.call('HGET', KEYS[1], 'heartbeat_at') or '0')
      ok = (now - beat) > stale
    else
      ok = true
    end
  end
end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 5 + count, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "ddpm"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def png(self, job_id: str) -> str:
        return f"{self.prefix}:png:{job_id}"

    def gif(self, job_id: str) -> str:
        return f"{self.prefix}:gif:{job_id}"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"


def transition_args(to: str, allowed: tuple[str, ...], stale_after_s: float, fields: dict[str, Any]) -> list[str]:
    """ARGV for :data:`TRANSITION_LUA`."""
    args = [to, repr(time.time()), repr(float(stale_after_s)), str(len(allowed)), *allowed]
    for name, value in fields.items():
        args += [name, str(value)]
    return args


def event_fields(event: str, data: dict[str, Any]) -> dict[str, str]:
    """A stream entry for one event."""
    return {"event": event, "data": json.dumps(data, separators=(",", ":"))}


def iso(timestamp: str | None) -> str | None:
    """Epoch seconds (as stored) -> ISO 8601 UTC, or None."""
    if not timestamp:
        return None
    seconds = float(timestamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def public_job(job_id: str, record: dict[str, str], position: int | None, base: str = "") -> dict[str, Any]:
    """The JSON of ``GET /jobs/{id}`` from the stored hash."""
    status = record.get("status", "queued")
    params = json.loads(record.get("params") or "{}")
    body: dict[str, Any] = {
        "id": job_id,
        "status": status,
        "progress": {"step": int(record.get("step") or 0), "total": int(record.get("total") or 0)},
        "queue_position": position if status == "queued" else None,
        "created_at": iso(record.get("created_at")),
        "started_at": iso(record.get("started_at")),
        "finished_at": iso(record.get("finished_at")),
        "params": params,
        "seed": int(record["seed"]) if record.get("seed") else None,
        "model": record.get("model"),
        "weights_sha256": record.get("weights_sha256"),
        "attempts": int(record.get("attempts") or 0),
        "cancel_requested": record.get("cancel") == "1",
        "error": record.get("error") or None,
        "links": job_links(job_id, base),
    }
    return body


def job_links(job_id: str, base: str = "") -> dict[str, str]:
    root = f"{base}/jobs/{job_id}"
    return {"self": root, "events": f"{root}/events", "png": f"{root}/png", "gif": f"{root}/gif"}


class AsyncJobStore:
    """The API's view of jobs in Redis."""

    def __init__(self, client: aioredis.Redis, raw: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self.client = client  # decode_responses=True
        self.raw = raw  # bytes, for results
        self.keys = Keys(prefix)
        self.ttl_s = ttl_s
        self._transition = client.register_script(TRANSITION_LUA)

    async def queue_length(self) -> int:
        # forget queue entries older than the time to live (their jobs are gone)
        await self.client.zremrangebyscore(self.keys.queue, "-inf", time.time() - self.ttl_s)
        return int(await self.client.zcard(self.keys.queue))

    async def create(self, job_id: str, record: dict[str, Any]) -> None:
        """Store a new queued job with its ``queued`` event, atomically."""
        now = time.time()
        fields = {name: str(value) for name, value in record.items()}
        fields.update(status="queued", created_at=repr(now), step="0", attempts="0")
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.job(job_id), mapping=fields)
            pipe.expire(self.keys.job(job_id), self.ttl_s)
            pipe.zadd(self.keys.queue, {job_id: now})
            pipe.xadd(self.keys.events(job_id), event_fields("queued", {"status": "queued", "job": job_id}))
            pipe.expire(self.keys.events(job_id), self.ttl_s)
            await pipe.execute()

    async def forget(self, job_id: str) -> None:
        """Remove a job that could not be handed to the broker."""
        await self.client.delete(self.keys.job(job_id), self.keys.events(job_id))
        await self.client.zrem(self.keys.queue, job_id)

    async def get(self, job_id: str) -> dict[str, str] | None:
        record = await self.client.hgetall(self.keys.job(job_id))
        return record or None

    async def position(self, job_id: str) -> int | None:
        rank = await self.client.zrank(self.keys.queue, job_id)
        return None if rank is None else int(rank) + 1

    async def result(self, job_id: str, kind: str) -> bytes | None:
        key = self.keys.png(job_id) if kind == "png" else self.keys.gif(job_id)
        return await self.raw.get(key)

    async def cancel(self, job_id: str) -> str:
        """Ask a job to stop: a queued job is cancelled at once, a running one at its next step.

        Returns the status after the request."""
        key = self.keys.job(job_id)
        await self.client.hset(key, "cancel", "1")
        done = await self._transition(
            keys=[key], args=transition_args("cancelled", ("queued",), 1e18, {"finished_at": repr(time.time())})
        )
        if int(done) == 1:
            await self.client.zrem(self.keys.queue, job_id)
            await self.client.xadd(
                self.keys.events(job_id), event_fields("cancelled", {"status": "cancelled", "step": 0})
            )
            return "cancelled"
        return str(await self.client.hget(key, "status") or "unknown")

    async def live_workers(self) -> list[str]:
        """Workers that reported within the last :data:`WORKER_FRESH_S` seconds."""
        return list(await self.client.zrangebyscore(self.keys.workers, time.time() - WORKER_FRESH_S, "+inf"))
