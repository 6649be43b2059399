"""Job state transitions: each is one Lua script, so a change of status, the queue, the set of
running jobs and the event that announces it happen together or not at all.

==========  ===========================  ==============================================
script      from                         to
==========  ===========================  ==============================================
create      (no job)                     queued, if fewer than the cap are waiting
claim       queued, or running abandoned  running (attempts + 1)
finish      queued or running            succeeded, failed or cancelled
cancel      queued                       cancelled (a running job gets a cancel flag)
requeue     running abandoned            queued
resend      queued, message lost         queued (its task is sent again)
==========  ===========================  ==============================================

A queued job's task message waits in the broker until a worker takes it. A running job whose
worker stopped is queued again (``requeue``), and a queued job whose message the broker no
longer holds is marked sent again (``resend``), once per window whoever asks; their callers send
the task again. A duplicate message is harmless: ``claim`` lets only one run. See
:mod:`contract.broker`.

The scripts also keep the service's counters and histograms (:mod:`contract.metrics`), in the
same atomic step as the change they count: ``create`` counts a job submitted, ``finish`` and a
queued job's ``cancel`` count it succeeded, failed or cancelled and observe its POST-to-finish
and queue-wait seconds (from the job's ``created_at`` and ``started_at``), ``requeue`` counts a
job queued again. A transition refused (0, -1, a finished job) counts nothing. A job submitted with a webhook URL
gets its delivery (:mod:`contract.webhooks`) from the script that ends it, in the same step.

A running job is *abandoned* when its heartbeat is older than the stale window, or when the
worker that claimed it has not reported for ``worker_dead_after_s`` (a killed worker's job is
taken over within seconds, not after the whole stale window).

:class:`Transitions` registers the scripts on a Redis client, sync or async alike: each method
returns the script's reply, or an awaitable of it for an async client.
"""

from __future__ import annotations

from typing import Any

from contract.layout import JobStatus, Keys, event_data, new_job_fields
from contract.metrics import OBSERVE_LUA, MetricKeys
from contract.spec import JobSpec
from contract.webhooks import ENQUEUE_LUA, WebhookKeys

_ABANDONED = """
local function abandoned(job_key, workers_key, now, stale, dead_after)
  local beat = tonumber(redis.call('HGET', job_key, 'heartbeat_at') or '0')
  if now - beat > stale then return true end
  local worker = redis.call('HGET', job_key, 'worker')
  if not worker then return true end
  local seen = redis.call('ZSCORE', workers_key, worker)
  if not seen then return true end
  return now - tonumber(seen) > dead_after
end
"""

# Creating a job (a Lua function of CREATE_LUA and CREATE_ONCE_LUA): KEYS 1-4 are job, queue,
# events, job counters; ARGV: now, ttl, max_queue, job id, event data, then from ``first_field``
# field, value, ... -> queue position (>= 1), 0 when the queue is full, -1 when the id exists.
_CREATE = """
local function create_job(first_field)
  local now, ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
  if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
  if redis.call('ZCOUNT', KEYS[2], now - ttl, '+inf') >= cap then return 0 end
  redis.call('HSET', KEYS[1], unpack(ARGV, first_field))
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], now, ARGV[4])
  redis.call('XADD', KEYS[3], '*', 'event', 'queued', 'data', ARGV[5])
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('HINCRBY', KEYS[4], 'submitted', 1)
  return redis.call('ZCOUNT', KEYS[2], now - ttl, now)
end
"""

CREATE_LUA = _CREATE + "return create_job(6)\n"

# Creating a job once per Idempotency-Key: KEYS as create, then the key's record; ARGV as create,
# then the record's time to live and the request's fingerprint before the fields -> {outcome, job
# id, fingerprint, queue position}: outcome 1 created, 2 the key's job (already made: nothing
# created), 0 queue full, -1 id taken. Concurrent duplicates make one job.
CREATE_ONCE_LUA = (
    _CREATE
    + """
local found = redis.call('HMGET', KEYS[5], 'job', 'fingerprint', 'position')
if found[1] then return {2, found[1], found[2], tonumber(found[3])} end
local position = create_job(8)
if position < 1 then return {position, '', '', 0} end
redis.call('HSET', KEYS[5], 'job', ARGV[4], 'fingerprint', ARGV[7], 'position', position, 'created_at', ARGV[1])
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[6]))
return {1, ARGV[4], ARGV[7], position}
"""
)

# KEYS: job, queue, running, events, workers. ARGV: now, worker, stale, dead_after, ttl,
# max_attempts, job id -> attempt number (>= 1); 0 not claimable; -1 no job; -2 out of attempts.
CLAIM_LUA = (
    _ABANDONED
    + """
local now = tonumber(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'running' then
  if not abandoned(KEYS[1], KEYS[5], now, tonumber(ARGV[3]), tonumber(ARGV[4])) then return 0 end
elseif status ~= 'queued' then
  return 0
end
if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') >= tonumber(ARGV[6]) then return -2 end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'heartbeat_at', ARGV[1],
           'worker', ARGV[2], 'step', '0')
redis.call('ZREM', KEYS[2], ARGV[7])
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('XADD', KEYS[4], '*', 'event', 'running', 'data',
           cjson.encode({status = 'running', attempt = attempt, worker = ARGV[2]}))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
return attempt
"""
)

# The seconds from a job's submission to now, and to the start of its run (to now when it is
# queued: it never started, or its worker died and it waits again). Before its status changes.
_DURATIONS = """
local function durations(job_key, status, now)
  local created = tonumber(redis.call('HGET', job_key, 'created_at') or '') or now
  local began = now
  if status == 'running' then began = tonumber(redis.call('HGET', job_key, 'started_at') or '') or now end
  return now - created, began - created
end
"""

# KEYS: job, queue, running, events, job counters, job seconds, queue-wait seconds, webhook
# delivery, webhooks due. ARGV: now, ttl, status, event data, job id, field, value, ... -> 1 done,
# 0 already ended, -1 no job.
FINISH_LUA = (
    OBSERVE_LUA
    + ENQUEUE_LUA
    + _DURATIONS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status ~= 'queued' and status ~= 'running' then return 0 end
local total, waited = durations(KEYS[1], status, tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[1])
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('SREM', KEYS[3], ARGV[5])
redis.call('XADD', KEYS[4], '*', 'event', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
observe(KEYS[6], ARGV[3] .. ':', total)
observe(KEYS[7], '', waited)
enqueue_webhook(KEYS[1], KEYS[8], KEYS[9], ARGV[5], ARGV[3], ARGV[1], tonumber(ARGV[2]))
return 1
"""
)

# KEYS: job, queue, events, job counters, job seconds, queue-wait seconds, webhook delivery,
# webhooks due. ARGV: now, ttl, job id -> the status after the request (a running job keeps
# running until its next step), or nil when there is no job.
CANCEL_LUA = (
    OBSERVE_LUA
    + ENQUEUE_LUA
    + _DURATIONS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'queued' and status ~= 'running' then return status end
redis.call('HSET', KEYS[1], 'cancel', '1')
if status == 'running' then return status end
local total, waited = durations(KEYS[1], status, tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], '*', 'event', 'cancelled', 'data', cjson.encode({status = 'cancelled', step = 0}))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
observe(KEYS[5], 'cancelled:', total)
observe(KEYS[6], '', waited)
enqueue_webhook(KEYS[1], KEYS[7], KEYS[8], ARGV[3], 'cancelled', ARGV[1], tonumber(ARGV[2]))
return 'cancelled'
"""
)

# KEYS: job, queue, running, events, workers, job counters. ARGV: now, stale, dead_after, job id
# -> 1 queued again, 0 not abandoned (or no longer running).
REQUEUE_LUA = (
    _ABANDONED
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  redis.call('SREM', KEYS[3], ARGV[4])
  return 0
end
if not abandoned(KEYS[1], KEYS[5], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'step', '0', 'sent_at', ARGV[1])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'created_at') or ARGV[1]), ARGV[4])
redis.call('XADD', KEYS[4], '*', 'event', 'queued', 'data',
           cjson.encode({status = 'queued', requeued = true, reason = 'its worker stopped'}))
redis.call('HINCRBY', KEYS[6], 'requeued', 1)
return 1
"""
)


# KEYS: job, queue. ARGV: now, resend_after, job id -> 1 when the caller should send the task again.
RESEND_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 0
end
if status ~= 'queued' then return 0 end
local sent = tonumber(redis.call('HGET', KEYS[1], 'sent_at') or '0')
if tonumber(ARGV[1]) - sent <= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'sent_at', ARGV[1])
return 1
"""


class Transitions:
    """The transition scripts bound to one client and key prefix."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.keys = keys
        self.metrics = MetricKeys(keys.prefix)
        self.webhooks = WebhookKeys(keys.prefix)
        self._create = client.register_script(CREATE_LUA)
        self._create_once = client.register_script(CREATE_ONCE_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._finish = client.register_script(FINISH_LUA)
        self._cancel = client.register_script(CANCEL_LUA)
        self._resend = client.register_script(RESEND_LUA)
        self._requeue = client.register_script(REQUEUE_LUA)

    def create(
        self, job_id: str, spec: JobSpec, *, now: float, ttl_s: int, max_queue: int, webhook_url: str | None = None
    ) -> Any:
        """Store a queued job unless ``max_queue`` jobs already wait; its queue position, 0 when
        the queue is full, -1 when the id is taken."""
        k = self.keys
        fields = [item for pair in new_job_fields(spec, now, webhook_url).items() for item in pair]
        data = event_data({"status": "queued", "job": job_id})
        return self._create(
            keys=[k.job(job_id), k.queue, k.events(job_id), self.metrics.jobs],
            args=[repr(now), ttl_s, max_queue, job_id, data, *fields],
        )

    def create_once(
        self,
        job_id: str,
        spec: JobSpec,
        *,
        now: float,
        ttl_s: int,
        max_queue: int,
        record_key: str,
        record_ttl_s: int,
        fingerprint: str,
        webhook_url: str | None = None,
    ) -> Any:
        """:meth:`create`, once per idempotency record ``record_key``: ``[outcome, job id,
        fingerprint, position]``, outcome 1 created, 2 the record's job (nothing created), 0 the
        queue is full, -1 the id is taken."""
        k = self.keys
        fields = [item for pair in new_job_fields(spec, now, webhook_url).items() for item in pair]
        data = event_data({"status": "queued", "job": job_id})
        return self._create_once(
            keys=[k.job(job_id), k.queue, k.events(job_id), self.metrics.jobs, record_key],
            args=[repr(now), ttl_s, max_queue, job_id, data, record_ttl_s, fingerprint, *fields],
        )

    def claim(
        self,
        job_id: str,
        worker: str,
        *,
        now: float,
        stale_after_s: float,
        worker_dead_after_s: float,
        ttl_s: int,
        max_attempts: int,
    ) -> Any:
        """Take a queued (or abandoned) job for ``worker``: the attempt number, 0 when it is not
        claimable, -1 when it does not exist, -2 when it has used up its attempts."""
        k = self.keys
        return self._claim(
            keys=[k.job(job_id), k.queue, k.running, k.events(job_id), k.workers],
            args=[repr(now), worker, repr(stale_after_s), repr(worker_dead_after_s), ttl_s, max_attempts, job_id],
        )

    def finish(
        self, job_id: str, status: JobStatus, data: dict[str, Any], *, now: float, ttl_s: int, **fields: Any
    ) -> Any:
        """End a queued or running job with a terminal ``status``; 1 done, 0 already ended."""
        if not status.terminal:
            raise ValueError(f"{status.value} is not a terminal status")
        k, m = self.keys, self.metrics
        extra = [str(item) for pair in fields.items() for item in pair]
        w = self.webhooks
        return self._finish(
            keys=[
                k.job(job_id),
                k.queue,
                k.running,
                k.events(job_id),
                m.jobs,
                m.job_seconds,
                m.queue_wait_seconds,
                w.delivery(job_id),
                w.due,
            ],
            args=[repr(now), ttl_s, status.value, event_data({"status": status.value, **data}), job_id, *extra],
        )

    def cancel(self, job_id: str, *, now: float, ttl_s: int) -> Any:
        """Cancel a queued job, or flag a running one; the status after, or None."""
        k, m = self.keys, self.metrics
        w = self.webhooks
        return self._cancel(
            keys=[
                k.job(job_id),
                k.queue,
                k.events(job_id),
                m.jobs,
                m.job_seconds,
                m.queue_wait_seconds,
                w.delivery(job_id),
                w.due,
            ],
            args=[repr(now), ttl_s, job_id],
        )

    def requeue(self, job_id: str, *, now: float, stale_after_s: float, worker_dead_after_s: float) -> Any:
        """Put an abandoned running job back in the queue; 1 done, 0 not abandoned."""
        k = self.keys
        return self._requeue(
            keys=[k.job(job_id), k.queue, k.running, k.events(job_id), k.workers, self.metrics.jobs],
            args=[repr(now), repr(stale_after_s), repr(worker_dead_after_s), job_id],
        )

    def resend(self, job_id: str, *, now: float, resend_after_s: float) -> Any:
        """Mark a queued job whose task was sent over ``resend_after_s`` ago as sent now; 1 when
        the caller must send its task again (the caller checked that the message is gone)."""
        return self._resend(
            keys=[self.keys.job(job_id), self.keys.queue], args=[repr(now), repr(resend_after_s), job_id]
        )
