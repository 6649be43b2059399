"""The service's metrics as kept in Redis, the one source of truth for every process.

Counters and histograms rise in Redis, atomically with what they count: the transition
scripts of :mod:`contract.transitions` count submitted and finished jobs and observe their
durations in the same script that changes the job's status, so a count rises exactly once per
transition whichever API or worker process made it. The API counts the requests it rejects; a
worker adds its model load times when it reports. ``GET /metrics`` reads everything at scrape
time and renders it in the Prometheus text format. Torch-free: the API and the workers both
import this module.

Keys, under the prefix of :class:`contract.layout.Keys` (they never expire):

* ``{p}:metrics:jobs`` hash of counters: ``submitted``, ``succeeded``, ``failed``,
  ``cancelled``, ``requeued``;
* ``{p}:metrics:rejected`` hash: rejected submissions by reason (:class:`Refusal`);
* ``{p}:metrics:webhooks`` hash of webhook counters (:data:`WEBHOOK_COUNTERS`): delivery
  ``attempts``, ``failed_attempts``, deliveries ``delivered`` and ``given_up``;
* ``{p}:metrics:job-seconds`` histogram of POST-to-finish seconds, by final status: fields
  ``{status}:count``, ``{status}:sum`` and ``{status}:bucket:{le}``;
* ``{p}:metrics:queue-wait-seconds`` histogram of the seconds from POST to the start of the
  (last) run, or to the end for a job that never ran: ``count``, ``sum``, ``bucket:{le}``;
* ``{p}:metrics:models`` set of model names, and ``{p}:metrics:model-load:{model}`` histogram of
  the seconds a worker took to load the model's checkpoint, plus ``last`` (the latest load).

A histogram's ``bucket:{le}`` fields are *not* cumulative: each observation adds 1 to the one
bucket it falls in (``+Inf`` past the last bound), so an observation costs one increment; a
reader adds them up (:func:`read_histogram`). Per-worker gauges come from the
``{p}:worker-stats:{name}`` hashes the workers write while they report (see
:mod:`contract.layout`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

# seconds: a DDIM job on a warm GPU takes well under a second, a 1000-step DDPM grid on a CPU
# many minutes, and a full queue makes jobs wait for tens of minutes
JOB_SECONDS_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
MODEL_LOAD_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

FINISHED = ("succeeded", "failed", "cancelled")
JOB_COUNTERS = ("submitted", *FINISHED, "requeued")


class Refusal(str, Enum):
    """Why a submission (``POST /generate``, ``POST /v1/images/generations``) was refused: the one
    vocabulary of the answers' ``reason`` and of ``ddpm_jobs_rejected_total{reason}``. A refusal
    carries its reason from where it is decided; the status code stands for it only where the
    framework answers by itself (:data:`REASON_BY_STATUS`)."""

    INVALID = "invalid"  # a malformed body or header, or a field the model does not allow
    UNAUTHORIZED = "unauthorized"
    TOO_LARGE = "too_large"  # a body over DDPM_MAX_BODY_BYTES
    QUEUE_FULL = "queue_full"  # the service's queue holds DDPM_MAX_QUEUE jobs
    RATE_LIMITED = "rate_limited"  # this client's DDPM_RATE_LIMIT
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"  # an Idempotency-Key reused with another body
    WEBHOOK_REFUSED = "webhook_refused"  # a webhook_url the service will not call
    UNAVAILABLE = "unavailable"  # Redis or the broker unreachable
    ERROR = "error"  # anything else (a 5xx)


# answers made before a route runs (authentication, body limit, schema validation): the status says why
REASON_BY_STATUS = {
    400: Refusal.INVALID,
    401: Refusal.UNAUTHORIZED,
    413: Refusal.TOO_LARGE,
    422: Refusal.INVALID,
    503: Refusal.UNAVAILABLE,
}
WEBHOOK_COUNTERS = ("attempts", "failed_attempts", "delivered", "given_up")


@dataclass(frozen=True)
class MetricKeys:
    """The metric key names under one prefix."""

    prefix: str = "ddpm"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:metrics:jobs"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}:metrics:rejected"

    @property
    def webhooks(self) -> str:
        return f"{self.prefix}:metrics:webhooks"

    @property
    def job_seconds(self) -> str:
        return f"{self.prefix}:metrics:job-seconds"

    @property
    def queue_wait_seconds(self) -> str:
        return f"{self.prefix}:metrics:queue-wait-seconds"

    @property
    def models(self) -> str:
        return f"{self.prefix}:metrics:models"

    def model_load(self, model: str) -> str:
        return f"{self.prefix}:metrics:model-load:{model}"


def bound_name(bound: float) -> str:
    """A bucket bound as it appears in field names: ``0.5``, ``1``, ``1800``."""
    return f"{bound:g}"


def bucket_field(bound: float | None, label: str = "") -> str:
    """The field of the bucket ending at ``bound`` (None: past the last bound)."""
    return f"{label}bucket:{'+Inf' if bound is None else bound_name(bound)}"


def bucket_of(value: float, bounds: Sequence[float]) -> float | None:
    """The bound of the bucket ``value`` falls in; None past the last one."""
    return next((bound for bound in bounds if value <= bound), None)


def observation(value: float, bounds: Sequence[float], label: str = "") -> dict[str, int | float]:
    """The increments one observation makes to a histogram hash (``label`` prefixes the fields):
    1 to the count and to its bucket (ints), ``value`` to the sum (a float)."""
    value = max(0.0, float(value))
    return {f"{label}count": 1, f"{label}sum": value, bucket_field(bucket_of(value, bounds), label): 1}


@dataclass(frozen=True)
class Histogram:
    """A histogram read back: cumulative ``(le, count)`` pairs ending with ``(inf, count)``, the
    count and the sum."""

    buckets: list[tuple[float, int]]
    count: int
    sum: float


def read_histogram(fields: Mapping[str, str], bounds: Sequence[float], label: str = "") -> Histogram:
    """The histogram stored in ``fields`` (a hash as read with ``decode_responses=True``)."""
    cumulative, buckets = 0, []
    for bound in (*bounds, None):
        cumulative += int(fields.get(bucket_field(bound, label)) or 0)
        buckets.append((math.inf if bound is None else float(bound), cumulative))
    count = int(fields.get(f"{label}count") or 0)
    return Histogram(buckets=buckets, count=count, sum=float(fields.get(f"{label}sum") or 0.0))


def _lua_table(items: Sequence[str]) -> str:
    return "{" + ", ".join(items) + "}"


# A Lua function for the transition scripts: observe(key, label, value) adds one observation
# of ``value`` seconds to the job-seconds buckets of histogram ``key`` (``label`` prefixes its
# fields: '' or 'succeeded:'). Bounds come from JOB_SECONDS_BUCKETS.
OBSERVE_LUA = f"""
local BOUNDS = {_lua_table([repr(float(bound)) for bound in JOB_SECONDS_BUCKETS])}
local BOUND_NAMES = {_lua_table([repr(bound_name(bound)) for bound in JOB_SECONDS_BUCKETS])}
local function observe(key, label, value)
  if value < 0 then value = 0 end
  redis.call('HINCRBY', key, label .. 'count', 1)
  redis.call('HINCRBYFLOAT', key, label .. 'sum', value)
  for i = 1, #BOUNDS do
    if value <= BOUNDS[i] then
      redis.call('HINCRBY', key, label .. 'bucket:' .. BOUND_NAMES[i], 1)
      return
    end
  end
  redis.call('HINCRBY', key, label .. 'bucket:+Inf', 1)
end
"""
