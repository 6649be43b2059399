"""The API's (async) access to jobs in Redis: named operations over the contract's layout.

Routes call these methods only; the key layout and the transition scripts live in
:mod:`contract.layout` and :mod:`contract.transitions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from contract.layout import TERMINAL_EVENTS, JobRecord, Keys
from contract.spec import JobSpec
from contract.transitions import Transitions
from contract.webhooks import WebhookDelivery, WebhookKeys

TERMINAL_LOOKBACK = 8  # the newest stream entries searched for the terminal event


class QueueFull(Exception):
    """The queue already holds its maximum of waiting jobs."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"the queue is full ({waiting} jobs waiting); try again later")
        self.waiting = waiting


class IdempotencyMismatch(Exception):
    """An Idempotency-Key that made a job from another request (another body or endpoint)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            "this Idempotency-Key was used with a different request (body or endpoint); use a new key for a new request"
        )
        self.job_id = job_id


@dataclass(frozen=True)
class Created:
    """A job made, or found by its Idempotency-Key (``replayed``: made by an earlier request)."""

    job_id: str
    position: int
    replayed: bool


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
        self.webhook_keys = WebhookKeys(prefix)
        self._transitions = Transitions(client, self.keys)

    async def ping(self) -> None:
        await self._client.ping()

    async def create(self, job_id: str, spec: JobSpec, max_queue: int, webhook_url: str | None = None) -> int:
        """Store a new queued job with its ``queued`` event, atomically with the queue cap;
        its queue position. Raises :class:`QueueFull`."""
        position = int(
            await self._transitions.create(
                job_id, spec, now=time.time(), ttl_s=self.ttl_s, max_queue=max_queue, webhook_url=webhook_url
            )
        )
        if position == 0:
            raise QueueFull(max_queue)
        if position < 0:
            raise ValueError(f"job {job_id} exists already")
        return position

    async def create_once(
        self,
        job_id: str,
        spec: JobSpec,
        max_queue: int,
        *,
        record_key: str,
        record_ttl_s: int,
        fingerprint: str,
        webhook_url: str | None = None,
    ) -> Created:
        """:meth:`create` once per idempotency record: concurrent duplicates make one job, and
        a record's later requests get its job. Raises :class:`QueueFull` and
        :class:`IdempotencyMismatch` (the record was made by another request)."""
        outcome, found, recorded, position = await self._transitions.create_once(
            job_id,
            spec,
            now=time.time(),
            ttl_s=self.ttl_s,
            max_queue=max_queue,
            record_key=record_key,
            record_ttl_s=record_ttl_s,
            fingerprint=fingerprint,
            webhook_url=webhook_url,
        )
        outcome = int(outcome)
        if outcome == 0:
            raise QueueFull(max_queue)
        if outcome < 0:
            raise ValueError(f"job {job_id} exists already")
        if recorded != fingerprint:
            raise IdempotencyMismatch(found)
        return Created(job_id=found, position=int(position), replayed=outcome == 2)

    async def recorded(self, record_key: str, fingerprint: str) -> Created | None:
        """The job an idempotency record holds (None: no record). Raises :class:`IdempotencyMismatch`."""
        found, recorded, position = await self._client.hmget(record_key, ["job", "fingerprint", "position"])
        if not found:
            return None
        if recorded != fingerprint:
            raise IdempotencyMismatch(found)
        return Created(job_id=found, position=int(position or 0), replayed=True)

    async def forget_record(self, record_key: str, job_id: str) -> None:
        """Drop an idempotency record of a job that could not be queued (only if it holds that job)."""
        if await self._client.hget(record_key, "job") == job_id:
            await self._client.delete(record_key)

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

    async def image(self, job_id: str, index: int) -> bytes | None:
        """Sample ``index``'s own PNG (image models), or None."""
        return await self._raw.hget(self.keys.images(job_id), str(index))

    async def image_count(self, job_id: str) -> int:
        return int(await self._raw.hlen(self.keys.images(job_id)))

    async def webhook(self, record: JobRecord) -> WebhookDelivery | None:
        """The job's webhook delivery (None: the job asked for none)."""
        if not record.webhook_url:
            return None
        fields = await self._client.hgetall(self.webhook_keys.delivery(record.id))
        return WebhookDelivery.of(record.webhook_url, fields)

    async def wait_ended(self, job_id: str, timeout_s: float, block_ms: int = 5000) -> JobRecord | None:
        """The job's record once it has ended (None: gone), or as it is after ``timeout_s``.
        Waits on the job's event stream, so it wakes at the terminal event."""
        deadline = time.monotonic() + timeout_s
        last = "0-0"
        while True:
            record = await self.get(job_id)
            if record is None or record.status.terminal:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            wait_ms = max(1, int(min(left * 1000, block_ms)))
            entries = await self.events_after(job_id, last, count=200, block_ms=wait_ms)
            if entries:
                last = entries[-1].id  # a terminal event: the status was written in the same script

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

    async def terminal_event(self, job_id: str) -> StreamEntry | None:
        """The job's terminal event, the latest of its stream (None before it ended, or when its
        stream is gone)."""
        reply = await self._client.xrevrange(self.keys.events(job_id), count=TERMINAL_LOOKBACK)
        for entry_id, fields in reply:
            if fields.get("event") in TERMINAL_EVENTS:
                return StreamEntry(entry_id, fields["event"], fields.get("data", "{}"))
        return None

    async def live_workers(self, fresh_s: float) -> list[str]:
        """Workers that reported within the last ``fresh_s`` seconds."""
        return list(await self._client.zrangebyscore(self.keys.workers, time.time() - fresh_s, "+inf"))

    async def worker_reports(self, workers: list[str]) -> dict[str, dict[str, str]]:
        """The stats hash each of ``workers`` last reported (empty for one that has not yet)."""
        pipe = self._client.pipeline(transaction=False)
        for worker in workers:
            pipe.hgetall(self.keys.worker_stats(worker))
        return dict(zip(workers, await pipe.execute(), strict=True)) if workers else {}
