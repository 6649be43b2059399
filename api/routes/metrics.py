"""``GET /metrics``: the service's metrics in the Prometheus text format, and the counting of
rejected submissions.

Nothing is counted in this process's memory: every counter and histogram lives in Redis
(:mod:`contract.metrics`), where the transition scripts keep them whichever API or worker made
the change, so several API replicas and workers on other machines add up. A scrape reads Redis
(one transaction, so the numbers agree with each other) and renders the snapshot with
``prometheus_client`` through a collector on a fresh registry.

:class:`RejectionCounter` counts the answers of the endpoints that create jobs that refuse one,
by the reason the refusal carried (queue_full and rate_limited are both 429s); it wraps every
other middleware, so it also sees the body limit's 413.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import deps
from api.errors import ACCEPTED_STATE, REFUSAL_STATE, responses
from contract.layout import Keys
from contract.metrics import (
    FINISHED,
    JOB_COUNTERS,
    JOB_SECONDS_BUCKETS,
    MODEL_LOAD_BUCKETS,
    REASON_BY_STATUS,
    WEBHOOK_COUNTERS,
    Histogram,
    MetricKeys,
    Refusal,
    read_histogram,
)
from contract.webhooks import WebhookKeys

logger = logging.getLogger(__name__)
router = APIRouter(tags=["service"])
REASONS = tuple(reason.value for reason in Refusal)
SUBMIT_PATHS = frozenset({"/generate", "/v1/images/generations"})
# gauges read from each live worker's stats hash: (field, metric name, help)
WORKER_GAUGES = (
    ("steps_per_second", "ddpm_worker_steps_per_second", "Job steps per second since the worker's previous report"),
    (
        "mean_rows_per_tick",
        "ddpm_worker_mean_batch_rows",
        "Mean rows (samples) per batched forward since the worker started",
    ),
    ("occupancy", "ddpm_worker_batch_occupancy", "Mean rows per forward over the batch cap (0-1)"),
    ("max_batch", "ddpm_worker_max_batch", "The rows one forward may hold (DDPM_MAX_BATCH)"),
    ("running", "ddpm_worker_engine_jobs_running", "Jobs in the worker's batch now"),
    ("queued", "ddpm_worker_engine_jobs_waiting", "Jobs waiting in the worker's engine for room in the batch"),
    ("buckets_compiled", "ddpm_worker_compiled_buckets", "Forward batch sizes that run compiled code"),
    ("buckets_total", "ddpm_worker_forward_buckets", "Forward batch sizes in all (uncompiled ones run eagerly)"),
)
WORKER_COUNTERS = (
    ("job_steps", "ddpm_worker_job_steps", "Denoising steps of jobs run by the worker (one per job per forward)"),
    ("rows", "ddpm_worker_forward_rows", "Rows (samples) through the worker's batched forwards"),
    ("ticks", "ddpm_worker_ticks", "Batched forward steps of the worker's engines"),
    ("busy_seconds", "ddpm_worker_busy_seconds", "Seconds the worker's engines spent in forwards"),
)
MODEL_LOAD_PREFIX = "model_load_seconds:"


@dataclass
class Snapshot:
    """Everything ``/metrics`` shows, as read from Redis at one point in time."""

    jobs: dict[str, str]
    rejected: dict[str, str]
    job_seconds: dict[str, str]
    queue_wait: dict[str, str]
    queued: int
    running: int
    workers: dict[str, dict[str, str]]  # live workers' stats hashes
    model_loads: dict[str, dict[str, str]] = field(default_factory=dict)
    webhooks: dict[str, str] = field(default_factory=dict)
    webhooks_pending: int = 0


class MetricsStore:
    """The API's access to the metrics in Redis (async)."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int, worker_dead_after_s: float) -> None:
        self._client = client  # decode_responses=True
        self.keys = Keys(prefix)
        self.metrics = MetricKeys(prefix)
        self.ttl_s = ttl_s
        self.worker_dead_after_s = worker_dead_after_s

    async def count_rejection(self, reason: str) -> None:
        await self._client.hincrby(self.metrics.rejected, reason, 1)

    async def snapshot(self) -> Snapshot:
        now = time.time()
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(self.metrics.jobs)
        pipe.hgetall(self.metrics.rejected)
        pipe.hgetall(self.metrics.job_seconds)
        pipe.hgetall(self.metrics.queue_wait_seconds)
        pipe.zcount(self.keys.queue, now - self.ttl_s, "+inf")
        pipe.scard(self.keys.running)
        pipe.zrangebyscore(self.keys.workers, now - self.worker_dead_after_s, "+inf")
        pipe.smembers(self.metrics.models)
        pipe.hgetall(self.metrics.webhooks)
        pipe.zcard(WebhookKeys(self.keys.prefix).due)
        jobs, rejected, job_seconds, queue_wait, queued, running, workers, models, hooks, due = await pipe.execute()
        models = sorted(models)
        pipe = self._client.pipeline(transaction=True)
        for worker in workers:
            pipe.hgetall(self.keys.worker_stats(worker))
        for model in models:
            pipe.hgetall(self.metrics.model_load(model))
        replies = await pipe.execute() if workers or models else []
        return Snapshot(
            jobs=jobs,
            rejected=rejected,
            job_seconds=job_seconds,
            queue_wait=queue_wait,
            queued=int(queued),
            running=int(running),
            workers=dict(zip(workers, replies[: len(workers)], strict=True)),
            model_loads=dict(zip(models, replies[len(workers) :], strict=True)),
            webhooks=hooks,
            webhooks_pending=int(due),
        )


class SnapshotCollector(Collector):
    """The metric families of one :class:`Snapshot`."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        meaning = {
            "submitted": "Jobs accepted by POST /generate",
            "succeeded": "Jobs that ended succeeded",
            "failed": "Jobs that ended failed",
            "cancelled": "Jobs that ended cancelled (queued or running)",
            "requeued": "Running jobs queued again because their worker stopped",
        }
        for name in JOB_COUNTERS:
            yield CounterMetricFamily(f"ddpm_jobs_{name}", meaning[name], value=_number(s.jobs.get(name)))
        rejected = CounterMetricFamily(
            "ddpm_jobs_rejected",
            "Submissions refused (POST /generate, POST /v1/images/generations), by reason",
            labels=["reason"],
        )
        for reason in sorted(set(REASONS) | set(s.rejected)):
            rejected.add_metric([reason], _number(s.rejected.get(reason)))
        yield rejected
        hooks = {
            "attempts": "Webhook delivery attempts",
            "failed_attempts": "Webhook delivery attempts that failed (not 2xx, no answer, or a refused URL)",
            "delivered": "Webhook deliveries a receiver accepted",
            "given_up": "Webhook deliveries given up (DDPM_WEBHOOK_RETRY_FOR_S passed, or the URL was refused)",
        }
        for name in WEBHOOK_COUNTERS:
            yield CounterMetricFamily(f"ddpm_webhook_{name}", hooks[name], value=_number(s.webhooks.get(name)))
        yield GaugeMetricFamily(
            "ddpm_webhooks_pending", "Webhook deliveries due or waiting for a retry", value=s.webhooks_pending
        )

        duration = HistogramMetricFamily(
            "ddpm_job_duration_seconds",
            "Seconds from POST /generate to the job's end, by final status",
            labels=["status"],
        )
        for status in FINISHED:
            histogram = read_histogram(s.job_seconds, JOB_SECONDS_BUCKETS, f"{status}:")
            duration.add_metric([status], _buckets(histogram), histogram.sum)
        yield duration
        wait = read_histogram(s.queue_wait, JOB_SECONDS_BUCKETS)
        yield HistogramMetricFamily(
            "ddpm_job_queue_wait_seconds",
            "Seconds a finished job waited from POST /generate to the start of its run (to its end if it never ran)",
            buckets=_buckets(wait),
            sum_value=wait.sum,
        )

        yield GaugeMetricFamily("ddpm_queue_length", "Jobs waiting in the queue", value=s.queued)
        yield GaugeMetricFamily("ddpm_jobs_in_flight", "Jobs running on a worker", value=s.running)
        yield GaugeMetricFamily(
            "ddpm_workers_alive", "Workers that reported within DDPM_WORKER_DEAD_AFTER_S", value=len(s.workers)
        )
        yield GaugeMetricFamily(
            "ddpm_steps_per_second",
            "Job steps per second of all live workers (each since its previous report)",
            value=sum(_number(stats.get("steps_per_second")) for stats in s.workers.values()),
        )
        for key, name, documentation in WORKER_GAUGES:
            gauge = GaugeMetricFamily(name, documentation, labels=["worker"])
            for worker, stats in sorted(s.workers.items()):
                if key in stats:
                    gauge.add_metric([worker], _number(stats[key]))
            yield gauge
        for key, name, documentation in WORKER_COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=["worker"])
            for worker, stats in sorted(s.workers.items()):
                if key in stats:
                    counter.add_metric([worker], _number(stats[key]))
            yield counter
        last_load = GaugeMetricFamily(
            "ddpm_worker_model_load_seconds",
            "Seconds the worker took to load a model's checkpoint",
            labels=["worker", "model"],
        )
        for worker, stats in sorted(s.workers.items()):
            for key, value in sorted(stats.items()):
                if key.startswith(MODEL_LOAD_PREFIX):
                    last_load.add_metric([worker, key[len(MODEL_LOAD_PREFIX) :]], _number(value))
        yield last_load
        loads = HistogramMetricFamily(
            "ddpm_model_load_seconds", "Seconds workers took to load a model's checkpoint", labels=["model"]
        )
        for model, fields in sorted(s.model_loads.items()):
            histogram = read_histogram(fields, MODEL_LOAD_BUCKETS)
            loads.add_metric([model], _buckets(histogram), histogram.sum)
        yield loads


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Cumulative buckets with ``le`` as Prometheus writes it (``1.0``, ``+Inf``)."""
    return [(floatToGoString(bound), count) for bound, count in histogram.buckets]


def _number(value: str | float | None) -> float:
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


def _metrics_store(request: Request) -> MetricsStore:
    return request.app.state.metrics


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(deps.require_read_key)],
    responses={
        200: {"content": {"text/plain": {}}, "description": "the metrics in the Prometheus text format"},
        **responses(401, 503),
    },
)
async def metrics(request: Request, store: MetricsStore = Depends(_metrics_store)) -> Response:
    """Job counters, queue, durations, workers and their engines, in the Prometheus text format.
    Read from Redis at each scrape, so every API replica answers the same."""
    snapshot = await store.snapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)


class RejectionCounter:
    """Count the answers of the endpoints that create jobs that refuse one, in Redis (after the
    answer is sent; a failure to count is logged, never the client's problem). The reason is the
    one the refusal carried (:func:`api.errors.mark_refusal`); the status stands for it only
    where the framework answered before a route ran (401, 413, a schema's 422). An error after
    the job was made (the images endpoint's job failed) is no refusal."""

    def __init__(self, app: ASGIApp, paths: frozenset[str] = SUBMIT_PATHS) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # shared with the request's state downstream
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            await self._count(scope, Refusal.ERROR.value)
            raise
        if status >= 400 and not state.get(ACCEPTED_STATE):
            reason = state.get(REFUSAL_STATE) or REASON_BY_STATUS.get(status, Refusal.ERROR).value
            await self._count(scope, reason)

    async def _count(self, scope: Scope, reason: str) -> None:
        store: MetricsStore | None = getattr(scope["app"].state, "metrics", None)
        if store is None:
            return
        try:
            await asyncio.wait_for(store.count_rejection(reason), timeout=2)
        except Exception as error:  # Redis down: the rejection goes uncounted
            logger.warning("could not count a rejected submission (%s): %s", reason, error)
