"""The API's (async) access to jobs in Redis: named operations over the contract's layout.

Routes call these methods only; the key layout and the transition scripts live in
:mod:`contract.layout` and :mod:`contract.transitions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from contract.layout import JobRecord, Keys
from contract.spec import JobSpec
from contract.transitions import Transitions


class QueueFull(Exception):
    """The queue already holds its maximum of waiting jobs."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"the queue is full ({waiting} jobs waiting); try again later")
        self.waiting = waiting


@dataclass(frozen=True)
class StreamEntry:
    """One event of a job's stream: its id (the SSE id), type and JSON data."""

    id: str
    event: str
    data: str


class AsyncJobStore:
    """Jobs as the API sees them."""

    def __init__(self, client: aioredis.Redis, raw: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self._client = client  # decode_responses=True
        self._raw = raw  # bytes, for results
        self.keys = Keys(prefix)
        self.ttl_s = ttl_s
        self._transitions = Transitions(client, self.keys)

    async def ping(self) -> None:
        await self._client.ping()

    async def create(self, job_id: str, spec: JobSpec, max_queue: int) -> int:
        """Store a new queued job with its ``queued`` event, atomically with the queue cap;
        its queue position. Raises :class:`QueueFull`."""
        position = int(
            await self._transitions.create(job_id, spec, now=time.time(), ttl_s=self.ttl_s, max_queue=max_queue)
        )
        if position == 0:
            raise QueueFull(max_queue)
        if position < 0:
            raise ValueError(f"job {job_id} exists already")
        return position

    async def forget(self, job_id: str) -> None:
        """Remove a job that could not be handed to the broker."""
        await self._client.delete(self.keys.job(job_id), self.keys.events(job_id))
        await self._client.zrem(self.keys.queue, job_id)

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self._client.hgetall(self.keys.job(job_id))
        return JobRecord.from_hash(job_id, fields) if fields else None

    async def queue_length(self) -> int:
        """Jobs waiting (entries older than the time to live belong to expired jobs)."""
        return int(await self._client.zcount(self.keys.queue, time.time() - self.ttl_s, "+inf"))

    async def position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when the job is not waiting."""
        score = await self._client.zscore(self.keys.queue, job_id)
        if score is None:
            return None
        return int(await self._client.zcount(self.keys.queue, time.time() - self.ttl_s, score))

    async def result(self, job_id: str, kind: str) -> bytes | None:
        return await self._raw.get(self.keys.result(job_id, kind))

    async def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or ask a running one to stop at its next step; the
        status after the request (None: no such job)."""
        status = await self._transitions.cancel(job_id, now=time.time(), ttl_s=self.ttl_s)
        return None if status is None else str(status)

    async def events_after(self, job_id: str, after: str, count: int, block_ms: int) -> list[StreamEntry]:
        """Stream entries after id ``after`` (``0-0``: from the start), waiting up to ``block_ms``."""
        block = block_ms if block_ms > 0 else None
        reply = await self._client.xread({self.keys.events(job_id): after}, count=count, block=block)
        if not reply:
            return []
        return [
            StreamEntry(entry_id, fields.get("event", "message"), fields.get("data", "{}"))
            for entry_id, fields in reply[0][1]
        ]

    async def live_workers(self, fresh_s: float) -> list[str]:
        """Workers that reported within the last ``fresh_s`` seconds."""
        return list(await self._client.zrangebyscore(self.keys.workers, time.time() - fresh_s, "+inf"))

    async def worker_reports(self, workers: list[str]) -> dict[str, dict[str, str]]:
        """The stats hash each of ``workers`` last reported (empty for one that has not yet)."""
        pipe = self._client.pipeline(transaction=False)
        for worker in workers:
            pipe.hgetall(self.keys.worker_stats(worker))
        return dict(zip(workers, await pipe.execute(), strict=True)) if workers else {}
