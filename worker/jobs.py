"""The worker's (synchronous) access to job records, events and results in Redis. Torch-free."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from api.settings import Settings
from api.store import TERMINAL, TRANSITION_LUA, Keys, event_fields, transition_args

logger = logging.getLogger(__name__)


class JobStore:
    """Job state changes made by workers; every change also lands in the job's event stream."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.raw = redis.Redis.from_url(settings.redis_url)
        self.keys = Keys(settings.key_prefix)
        self.ttl_s = settings.result_ttl_s
        self._transition = self.client.register_script(TRANSITION_LUA)

    # ------------------------------------------------------------------ records
    def get(self, job_id: str) -> dict[str, str]:
        return self.client.hgetall(self.keys.job(job_id))

    def ensure(self, job_id: str, params: dict[str, Any]) -> dict[str, str]:
        """The job's record; recreated from the task's parameters if it expired meanwhile."""
        record = self.get(job_id)
        if record:
            return record
        logger.warning("job %s has no record (expired?); recreating it from the task", job_id)
        fields = {
            "status": "queued",
            "params": json.dumps(params),
            "seed": str(params.get("seed", 0)),
            "model": str(params.get("model", "")),
            "created_at": repr(time.time()),
            "step": "0",
            "attempts": "0",
        }
        self.client.hset(self.keys.job(job_id), mapping=fields)
        self.client.expire(self.keys.job(job_id), self.ttl_s)
        return fields

    def transition(
        self, job_id: str, to: str, allowed: tuple[str, ...], stale_after_s: float | None = None, **fields: Any
    ) -> bool:
        """Set status ``to`` if the current status is in ``allowed`` (a 'running' job only if its
        heartbeat is older than ``stale_after_s``, default the setting; negative: always); also
        set ``fields``. Atomic (one Lua script). True when it happened."""
        stale = self.settings.stale_after_s if stale_after_s is None else stale_after_s
        args = transition_args(to, allowed, stale, fields)
        return int(self._transition(keys=[self.keys.job(job_id)], args=args)) == 1

    def start(self, job_id: str, worker: str) -> bool:
        """Claim a queued job (or a running one whose worker went silent) for this worker."""
        now = repr(time.time())
        claimed = self.transition(
            job_id, "running", ("queued", "running"), started_at=now, heartbeat_at=now, worker=worker, step="0"
        )
        if claimed:
            attempts = self.client.hincrby(self.keys.job(job_id), "attempts", 1)
            self.client.zrem(self.keys.queue, job_id)
            self.client.sadd(self.keys.running, job_id)
            self.event(job_id, "running", {"status": "running", "attempt": attempts, "worker": worker})
        return claimed

    def attempts(self, job_id: str) -> int:
        return int(self.client.hget(self.keys.job(job_id), "attempts") or 0)

    def heartbeat(self, job_id: str) -> None:
        self.client.hset(self.keys.job(job_id), "heartbeat_at", repr(time.time()))

    def cancel_requested(self, job_id: str) -> bool:
        return self.client.hget(self.keys.job(job_id), "cancel") == "1"

    def set_model(self, job_id: str, name: str, weights_sha256: str, total: int) -> None:
        self.client.hset(
            self.keys.job(job_id), mapping={"model": name, "weights_sha256": weights_sha256, "total": str(total)}
        )

    def progress(self, job_id: str, step: int, total: int, eta_s: float | None, elapsed_s: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            self.keys.job(job_id), mapping={"step": str(step), "total": str(total), "heartbeat_at": repr(time.time())}
        )
        data = {
            "step": step,
            "total": total,
            "eta_s": None if eta_s is None else round(eta_s, 2),
            "elapsed_s": round(elapsed_s, 2),
        }
        pipe.xadd(self.keys.events(job_id), event_fields("progress", data))
        pipe.execute()

    def event(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        self.client.xadd(self.keys.events(job_id), event_fields(event, data))
        self.client.expire(self.keys.events(job_id), self.ttl_s)

    # ------------------------------------------------------------------ endings
    def succeed(self, job_id: str, png: bytes, gif: bytes, seconds: float) -> bool:
        """Store the results, then mark the job succeeded (results exist before the status says so)."""
        pipe = self.raw.pipeline(transaction=True)
        pipe.set(self.keys.png(job_id), png, ex=self.ttl_s)
        pipe.set(self.keys.gif(job_id), gif, ex=self.ttl_s)
        pipe.execute()
        return self._finish(job_id, "succeeded", {"seconds": round(seconds, 3)})

    def fail(self, job_id: str, error: str) -> bool:
        return self._finish(job_id, "failed", {"error": error}, error=error)

    def cancelled(self, job_id: str, step: int) -> bool:
        return self._finish(job_id, "cancelled", {"step": step})

    def _finish(self, job_id: str, status: str, data: dict[str, Any], **fields: Any) -> bool:
        """End a job this worker runs (or one still queued); False if it already ended."""
        assert status in TERMINAL
        done = self.transition(
            job_id, status, ("running", "queued"), stale_after_s=-1.0, finished_at=repr(time.time()), **fields
        )
        if done:
            self.client.srem(self.keys.running, job_id)
            self.client.zrem(self.keys.queue, job_id)
            self.event(job_id, status, {"status": status, **data})
            for key in (self.keys.job(job_id), self.keys.events(job_id)):
                self.client.expire(key, self.ttl_s)
        else:
            logger.warning("job %s had already ended; not marking it %s", job_id, status)
        return done

    # ------------------------------------------------------------------ workers
    def worker_alive(self, name: str) -> None:
        self.client.zadd(self.keys.workers, {name: time.time()})
        self.client.zremrangebyscore(self.keys.workers, "-inf", time.time() - 3600)

    def worker_gone(self, name: str) -> None:
        self.client.zrem(self.keys.workers, name)

    def stale_running(self) -> list[str]:
        """Running jobs whose heartbeat is older than ``stale_after_s`` (their worker died)."""
        stale = []
        now = time.time()
        for job_id in self.client.smembers(self.keys.running):
            record = self.get(job_id)
            if not record or record.get("status") != "running":
                self.client.srem(self.keys.running, job_id)
                continue
            if now - float(record.get("heartbeat_at") or 0) > self.settings.stale_after_s:
                stale.append(job_id)
        return stale

    def requeue(self, job_id: str) -> dict[str, Any] | None:
        """Put a stale running job back in the queue; its parameters, or None if someone else did."""
        if not self.transition(job_id, "queued", ("running",), step="0"):
            return None
        record = self.get(job_id)
        self.client.srem(self.keys.running, job_id)
        self.client.zadd(self.keys.queue, {job_id: float(record.get("created_at") or time.time())})
        self.event(job_id, "queued", {"status": "queued", "requeued": True, "reason": "its worker stopped"})
        return json.loads(record.get("params") or "{}")
