"""The worker's (synchronous) access to jobs in Redis: named operations over the contract's
layout and transitions. Torch-free."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from contract.broker import waiting_task_ids
from contract.layout import (
    CHECK_FIELD,
    TIMINGS_FIELD,
    DigitCheck,
    JobRecord,
    JobStatus,
    JobTimings,
    Keys,
    event_data,
    new_job_fields,
)
from contract.metrics import MODEL_LOAD_BUCKETS, MetricKeys, observation
from contract.settings import Settings
from contract.spec import JobSpec
from contract.transitions import Transitions

logger = logging.getLogger(__name__)

# a Redis restart closes pooled connections: retry on a fresh one (about 3 s in all) before failing
RETRYING = {
    "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), 6),
    "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    "socket_connect_timeout": 2,
}


class ModelLoads:
    """Model load times of this process that wait for the worker's next report (thread-safe).

    :class:`worker.models.ModelCache` adds one per checkpoint it loads; the worker's
    housekeeping writes them to Redis with its stats (:meth:`JobStore.worker_stats`), so loading
    a model never waits for Redis."""

    def __init__(self, keep: int = 256) -> None:
        self._pending: deque[tuple[str, float]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, model: str, seconds: float) -> None:
        with self._lock:
            self._pending.append((model, seconds))

    def take(self) -> list[tuple[str, float]]:
        with self._lock:
            taken = list(self._pending)
            self._pending.clear()
        return taken

    def put_back(self, loads: list[tuple[str, float]]) -> None:
        with self._lock:
            self._pending.extendleft(reversed(loads))


MODEL_LOADS = ModelLoads()


class Claim:
    """The outcome of :meth:`JobStore.claim`: ``attempt`` >= 1 when this worker runs the job."""

    def __init__(self, code: int) -> None:
        self.code = code

    @property
    def claimed(self) -> bool:
        return self.code >= 1

    @property
    def out_of_attempts(self) -> bool:
        return self.code == -2


class JobStore:
    """Job state changes made by workers; every change also lands in the job's event stream."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or redis.Redis.from_url(settings.redis_url, decode_responses=True, **RETRYING)
        self.raw = redis.Redis.from_url(settings.redis_url, **RETRYING)
        self.keys = Keys(settings.key_prefix)
        self.metrics = MetricKeys(settings.key_prefix)
        self.ttl_s = settings.result_ttl_s
        self.transitions = Transitions(self.client, self.keys)
        self._last_report: dict[str, tuple[float, float]] = {}  # worker -> (monotonic time, job steps)

    # ------------------------------------------------------------------ records
    def get(self, job_id: str) -> JobRecord | None:
        fields = self.client.hgetall(self.keys.job(job_id))
        return JobRecord.from_hash(job_id, fields) if fields else None

    def ensure(self, job_id: str, spec: JobSpec) -> JobRecord:
        """The job's record; recreated from the task's spec if it expired meanwhile."""
        record = self.get(job_id)
        if record is not None:
            return record
        logger.warning("job %s has no record (expired?); recreating it from the task", job_id)
        self.client.hset(self.keys.job(job_id), mapping=new_job_fields(spec, time.time()))
        self.client.expire(self.keys.job(job_id), self.ttl_s)
        record = self.get(job_id)
        assert record is not None
        return record

    def claim(self, job_id: str, worker: str) -> Claim:
        """Take a queued job (or one whose worker died) for ``worker``."""
        s = self.settings
        code = self.transitions.claim(
            job_id,
            worker,
            now=time.time(),
            stale_after_s=s.stale_after_s,
            worker_dead_after_s=s.worker_dead_after_s,
            ttl_s=self.ttl_s,
            max_attempts=s.max_attempts,
        )
        return Claim(int(code))

    def heartbeat(self, job_id: str) -> None:
        self.client.hset(self.keys.job(job_id), "heartbeat_at", repr(time.time()))

    def cancel_requested(self, job_id: str) -> bool:
        return self.client.hget(self.keys.job(job_id), "cancel") == "1"

    def batch(self) -> JobBatch:
        """Progress, events and cancel reads of many jobs, sent in one round trip."""
        return JobBatch(self)

    def progress(self, job_id: str, step: int, total: int, eta_s: float | None, elapsed_s: float) -> None:
        """Record the step reached and announce it (also a heartbeat)."""
        batch = self.batch()
        batch.progress(job_id, step, total, eta_s, elapsed_s)
        batch.execute()

    def event(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        """Append a non-status event (for example a preview) to the job's stream."""
        batch = self.batch()
        batch.event(job_id, event, data)
        batch.execute()

    # ------------------------------------------------------------------ endings
    def succeed(
        self,
        job_id: str,
        png: bytes,
        gif: bytes,
        seconds: float,
        check: DigitCheck | None = None,
        images: list[bytes] | None = None,
        timings: JobTimings | None = None,
    ) -> bool:
        """Store the results (the grid, the GIF and, for an image model, each sample's own PNG),
        then mark the job succeeded with its per-digit check, in one step (results exist before
        the status says so)."""
        pipe = self.raw.pipeline(transaction=True)
        pipe.set(self.keys.result(job_id, "png"), png, ex=self.ttl_s)
        pipe.set(self.keys.result(job_id, "gif"), gif, ex=self.ttl_s)
        if images:
            pipe.delete(self.keys.images(job_id))
            pipe.hset(self.keys.images(job_id), mapping={str(index): data for index, data in enumerate(images)})
            pipe.expire(self.keys.images(job_id), self.ttl_s)
        pipe.execute()
        fields = {"seconds": repr(seconds)}
        if check is not None:
            fields[CHECK_FIELD] = check.model_dump_json()
        if timings is not None:
            fields[TIMINGS_FIELD] = timings.model_dump_json()
        return self._finish(job_id, JobStatus.SUCCEEDED, {"seconds": round(seconds, 3)}, **fields)

    def fail(self, job_id: str, error: str) -> bool:
        return self._finish(job_id, JobStatus.FAILED, {"error": error}, error=error)

    def cancelled(self, job_id: str, step: int) -> bool:
        return self._finish(job_id, JobStatus.CANCELLED, {"step": step})

    def _finish(self, job_id: str, status: JobStatus, data: dict[str, Any], **fields: Any) -> bool:
        done = int(self.transitions.finish(job_id, status, data, now=time.time(), ttl_s=self.ttl_s, **fields)) == 1
        if not done:
            logger.warning("job %s had already ended; not marking it %s", job_id, status.value)
        return done

    # ------------------------------------------------------------------ workers
    def worker_alive(self, name: str) -> None:
        now = time.time()
        self.client.zadd(self.keys.workers, {name: now})
        self.client.zremrangebyscore(self.keys.workers, "-inf", now - 3600)

    def worker_gone(self, name: str) -> None:
        self.client.zrem(self.keys.workers, name)
        self.client.delete(self.keys.worker_stats(name))

    def worker_stats(self, name: str, fields: dict[str, str], loads: ModelLoads = MODEL_LOADS) -> None:
        """The worker's engine counters, kept while it reports, with ``steps_per_second`` (job
        steps per second since its previous report); and the model loads since then, in each
        model's load histogram and as ``model_load_seconds:{model}`` (the latest load)."""
        fields = dict(fields)
        now = time.monotonic()
        steps = float(fields.get("job_steps") or 0)
        previous = self._last_report.get(name)
        rate = 0.0
        if previous is not None and now > previous[0] and steps >= previous[1]:
            rate = (steps - previous[1]) / (now - previous[0])
        fields["steps_per_second"] = repr(rate)
        taken = loads.take()
        for model, seconds in taken:
            fields[f"model_load_seconds:{model}"] = repr(seconds)
        key = self.keys.worker_stats(name)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, max(60, int(4 * self.settings.worker_dead_after_s)))
        for model, seconds in taken:
            histogram = self.metrics.model_load(model)
            pipe.sadd(self.metrics.models, model)
            for field, increment in observation(seconds, MODEL_LOAD_BUCKETS).items():
                if isinstance(increment, float):  # the sum
                    pipe.hincrbyfloat(histogram, field, increment)
                else:
                    pipe.hincrby(histogram, field, increment)
            pipe.hset(histogram, "last", repr(seconds))
        try:
            pipe.execute()
        except Exception:
            loads.put_back(taken)  # the next report writes them
            raise
        self._last_report[name] = (now, steps)

    def prune_queue(self) -> int:
        """Drop queue entries older than the time to live (their jobs have expired)."""
        return int(self.client.zremrangebyscore(self.keys.queue, "-inf", time.time() - self.ttl_s))

    def resend_lost(self) -> list[JobRecord]:
        """Queued jobs whose task was sent over ``lost_message_after_s`` ago and whose message the
        broker no longer holds (:func:`contract.broker.waiting_task_ids`), each marked sent now:
        the caller sends their tasks again. A job whose message waits is never sent twice."""
        after = self.settings.lost_message_after_s
        old = self.client.zrangebyscore(self.keys.queue, "-inf", time.time() - after)
        if not old:
            return []
        waiting = waiting_task_ids(self.client, self.settings.queue_name)
        lost = []
        for job_id in old:
            if job_id in waiting:
                continue
            if int(self.transitions.resend(job_id, now=time.time(), resend_after_s=after)) == 1:
                record = self.get(job_id)
                if record is not None:
                    lost.append(record)
        return lost

    def requeue_abandoned(self) -> list[JobRecord]:
        """Put running jobs whose worker stopped back in the queue; their records."""
        s = self.settings
        requeued = []
        for job_id in self.client.smembers(self.keys.running):
            done = self.transitions.requeue(
                job_id, now=time.time(), stale_after_s=s.stale_after_s, worker_dead_after_s=s.worker_dead_after_s
            )
            if int(done) == 1:
                record = self.get(job_id)
                if record is not None:
                    requeued.append(record)
        return requeued


class JobBatch:
    """Writes and reads of many jobs queued on one pipeline and sent in one round trip
    (:meth:`execute`): how the worker's :class:`~worker.progress.JobWatch` publishes every job's
    progress and reads every job's cancel flag at once."""

    def __init__(self, store: JobStore) -> None:
        self.keys = store.keys
        self._pipe = store.client.pipeline(transaction=False)
        self._flags: list[int] = []  # positions of the cancel reads among the pipeline's results
        self._commands = 0

    def __len__(self) -> int:
        return self._commands

    def progress(self, job_id: str, step: int, total: int, eta_s: float | None, elapsed_s: float) -> None:
        """Record the step reached and announce it (also a heartbeat)."""
        beat = repr(time.time())
        self._pipe.hset(self.keys.job(job_id), mapping={"step": str(step), "total": str(total), "heartbeat_at": beat})
        data = {
            "step": step,
            "total": total,
            "eta_s": None if eta_s is None else round(eta_s, 2),
            "elapsed_s": round(elapsed_s, 2),
        }
        self._pipe.xadd(self.keys.events(job_id), {"event": "progress", "data": event_data(data)})
        self._commands += 2

    def event(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        """Append a non-status event (for example a preview) to the job's stream."""
        self._pipe.xadd(self.keys.events(job_id), {"event": event, "data": event_data(data)})
        self._commands += 1

    def read_cancel(self, job_id: str) -> None:
        """Read whether the job's cancellation was asked for (an entry of :meth:`execute`'s flags)."""
        self._flags.append(self._commands)
        self._pipe.hget(self.keys.job(job_id), "cancel")
        self._commands += 1

    def execute(self) -> list[bool]:
        """Send everything queued; the cancel flags read, in the order :meth:`read_cancel` was called."""
        if not self._commands:
            return []
        results = self._pipe.execute()
        return [results[position] == "1" for position in self._flags]
