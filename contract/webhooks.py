"""Webhook deliveries in Redis: one per job that asked for one, made atomically with the job's end.

A job submitted with a ``webhook_url`` keeps it in its hash. The transition that ends the job
(``finish``, or ``cancel`` of a queued job, :mod:`contract.transitions`) also creates its
delivery, in the same script: so a delivery exists exactly when such a job has ended, whichever
process ended it, and survives a restart of any process. The API's dispatcher
(:mod:`api.webhooks.dispatcher`) is the one component that sends deliveries: it claims the due
ones (:meth:`Deliveries.claim`, atomic, so several API replicas never send one twice at once),
sends each and records the outcome (:meth:`Deliveries.record`), which schedules the next attempt
or ends the delivery.

Keys, under the prefix of :class:`contract.layout.Keys`:

* ``{p}:webhook:{id}`` hash: ``url``, ``event`` (``job.succeeded``, ...), ``state``
  (:class:`DeliveryState`), ``attempts``, ``created_at`` (the job's end), ``next_attempt_at``,
  ``first_attempt_at``, ``last_attempt_at``, ``last_status`` (the receiver's HTTP status),
  ``last_error``, ``delivered_at``; ``message_id`` and ``body`` (the JSON sent, fixed at the
  first attempt so that every retry sends the same bytes under the same ``webhook-id``);
* ``{p}:webhooks:due`` sorted set: the ids of pending deliveries by the time they are due.

Torch-free: the worker (through the transitions) and the API import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from contract.layout import WEBHOOK_FIELD, Keys
from contract.metrics import MetricKeys


class DeliveryState(str, Enum):
    WAITING = "waiting"  # the job has not ended yet
    PENDING = "pending"  # due, being sent, or waiting for its next attempt
    DELIVERED = "delivered"  # a receiver answered 2xx
    GIVEN_UP = "given_up"  # every attempt failed for DDPM_WEBHOOK_RETRY_FOR_S, or the URL was refused


@dataclass(frozen=True)
class WebhookKeys:
    prefix: str = "ddpm"

    def delivery(self, job_id: str) -> str:
        return f"{self.prefix}:webhook:{job_id}"

    @property
    def due(self) -> str:
        return f"{self.prefix}:webhooks:due"


class WebhookDelivery(BaseModel):
    """A job's webhook delivery as ``GET /jobs/{id}`` shows it (``webhook``)."""

    url: str = Field(description="where the job's end is announced")
    state: DeliveryState = Field(
        description="waiting (the job runs), pending (being sent or retried), delivered, or given_up"
    )
    id: str | None = Field(None, description="the webhook-id header of every attempt (null before the first)")
    event: str | None = Field(None, description="job.succeeded, job.failed or job.cancelled; null while waiting")
    attempts: int = Field(0, description="attempts made")
    last_status: int | None = Field(None, description="the receiver's HTTP status at the last attempt")
    last_error: str | None = Field(None, description="why the last attempt failed (or the URL was refused)")
    last_attempt_at: float | None = Field(None, description="epoch seconds")
    next_attempt_at: float | None = Field(None, description="epoch seconds; null unless pending")
    delivered_at: float | None = Field(None, description="epoch seconds; null unless delivered")

    @classmethod
    def of(cls, url: str, fields: dict[str, str]) -> WebhookDelivery:
        """The delivery of a job with ``url``, from its hash (empty: the job has not ended)."""
        if not fields:
            return cls(url=url, state=DeliveryState.WAITING)
        state = DeliveryState(fields.get("state") or DeliveryState.PENDING.value)
        return cls(
            url=fields.get("url") or url,
            state=state,
            id=fields.get("message_id") or None,
            event=fields.get("event") or None,
            attempts=int(fields.get("attempts") or 0),
            last_status=int(fields["last_status"]) if fields.get("last_status") else None,
            last_error=fields.get("last_error") or None,
            last_attempt_at=_float(fields.get("last_attempt_at")),
            next_attempt_at=_float(fields.get("next_attempt_at")) if state is DeliveryState.PENDING else None,
            delivered_at=_float(fields.get("delivered_at")),
        )


def _float(value: str | None) -> float | None:
    return float(value) if value else None


# A Lua function for the transition scripts that end a job: create its delivery, due now, when
# the job has a webhook URL (once: a delivery that exists is left alone).
ENQUEUE_LUA = f"""
local function enqueue_webhook(job_key, delivery_key, due_key, job_id, status, now, ttl)
  local url = redis.call('HGET', job_key, '{WEBHOOK_FIELD}')
  if not url or url == '' then return end
  if redis.call('EXISTS', delivery_key) == 1 then return end
  redis.call('HSET', delivery_key, 'url', url, 'event', 'job.' .. status, 'state', 'pending',
             'attempts', 0, 'created_at', now, 'next_attempt_at', now)
  redis.call('EXPIRE', delivery_key, ttl)
  redis.call('ZADD', due_key, tonumber(now), job_id)
end
"""

# KEYS: due. ARGV: now, lease seconds, most -> the ids of up to ``most`` due deliveries, each
# leased: due again after the lease, should its sender stop before recording an outcome.
CLAIM_LUA = """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
end
return ids
"""

# KEYS: delivery, due, webhook counters. ARGV: job id, now, outcome (delivered, retry, given_up),
# next attempt at, HTTP status ('' for none), error, ttl -> 1 recorded, 0 not pending (already ended).
RECORD_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local outcome = ARGV[3]
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_attempt_at', ARGV[2], 'last_status', ARGV[5], 'last_error', ARGV[6])
redis.call('HINCRBY', KEYS[3], 'attempts', 1)
if outcome == 'delivered' then
  redis.call('HSET', KEYS[1], 'state', 'delivered', 'delivered_at', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'delivered', 1)
else
  redis.call('HINCRBY', KEYS[3], 'failed_attempts', 1)
  if outcome == 'retry' then
    redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[4])
    redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
  else
    redis.call('HSET', KEYS[1], 'state', 'given_up')
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('HINCRBY', KEYS[3], 'given_up', 1)
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
return 1
"""


class Deliveries:
    """The delivery scripts bound to one client (sync or async: each method returns the reply,
    or an awaitable of it) and key prefix."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.keys = WebhookKeys(keys.prefix)
        self.metrics = MetricKeys(keys.prefix)
        self._claim = client.register_script(CLAIM_LUA)
        self._record = client.register_script(RECORD_LUA)

    def claim(self, *, now: float, lease_s: float, most: int) -> Any:
        """Lease up to ``most`` due deliveries; their job ids."""
        return self._claim(keys=[self.keys.due], args=[repr(now), repr(lease_s), most])

    def record(
        self,
        job_id: str,
        outcome: str,
        *,
        now: float,
        next_at: float | None,
        status: int | None,
        error: str,
        ttl_s: int,
    ) -> Any:
        """Record one attempt's ``outcome`` (``delivered``, ``retry`` at ``next_at``, ``given_up``)."""
        if outcome not in ("delivered", "retry", "given_up"):
            raise ValueError(f"unknown outcome {outcome!r}")
        return self._record(
            keys=[self.keys.delivery(job_id), self.keys.due, self.metrics.webhooks],
            args=[job_id, repr(now), outcome, repr(next_at or now), "" if status is None else status, error, ttl_s],
        )
