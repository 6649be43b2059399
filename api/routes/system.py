"""``GET /models``, ``GET /auth`` (which requests need an API key), ``GET /healthz`` (alive) and
``GET /readyz`` (Redis and a worker that consumes the API's queue)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from api import deps
from api.schemas import Health, KeyRequirements, ModelList, ModelView, Readiness, WorkerReadiness
from contract.checkable import check_plan
from contract.layout import QUEUES_FIELD, ROW_SECONDS_FIELD, decode_queues, decode_row_seconds
from contract.registry import ModelRegistry
from contract.settings import Settings

router = APIRouter(tags=["service"])


@router.get("/models", response_model=ModelList)
async def list_models(registry: deps.RegistryDep, settings: deps.SettingsDep, store: deps.StoreDep) -> ModelList:
    """The models on offer, read from their checkpoint headers: kind, classes, sample shape, the
    most samples one job may ask for, each sampler's steps, whether results are checked and how
    long a step takes on a live worker now; the samplers and the request limits."""
    row_seconds = await _row_seconds(store, settings)
    models = await run_in_threadpool(_model_views, registry, settings, row_seconds)
    return ModelList.of(registry.default_name(), models, settings.limits)


async def _row_seconds(store, settings: Settings) -> dict[str, float]:
    """The fastest live worker's recent seconds per forward row of each model, by weights; empty
    when Redis does not answer (the models are listed all the same)."""
    try:
        workers = await asyncio.wait_for(store.live_workers(settings.worker_dead_after_s), timeout=1)
        reports = await asyncio.wait_for(store.worker_reports(workers), timeout=1)
    except Exception:
        return {}
    fastest: dict[str, float] = {}
    for report in reports.values():
        for weights, seconds in decode_row_seconds(report.get(ROW_SECONDS_FIELD)).items():
            fastest[weights] = min(seconds, fastest.get(weights, seconds))
    return fastest


def _model_views(registry: ModelRegistry, settings: Settings, row_seconds: dict[str, float]) -> list[ModelView]:
    return [
        ModelView.of(info, settings.limits, check_plan(info, settings), row_seconds.get(info.weights_sha256))
        for info in registry.list()
    ]


@router.get("/auth", response_model=KeyRequirements)
async def auth(settings: deps.SettingsDep) -> KeyRequirements:
    """Which requests need an API key (DDPM_API_KEYS, DDPM_PROTECT_READS); never the keys."""
    writes = bool(settings.api_key_set)
    return KeyRequirements(writes=writes, reads=writes and settings.protect_reads)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The API process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Redis unreachable, or no live worker on the API's queue"}},
)
async def readyz(response: Response, store: deps.StoreDep, settings: deps.SettingsDep) -> Readiness:
    """Ready when Redis answers and at least one worker that consumes the queue the API sends
    jobs to (``DDPM_QUEUE_NAME``) reported recently: the workers' heartbeats in Redis say which
    queues each consumes."""
    try:
        await asyncio.wait_for(store.ping(), timeout=3)
        workers = await asyncio.wait_for(store.live_workers(settings.worker_dead_after_s), timeout=3)
        queued = await store.queue_length()
        reports = await store.worker_reports(workers)
    except Exception as error:  # any failure to reach Redis means not ready
        response.status_code = 503
        reason = f"Redis is unreachable: {type(error).__name__}: {error}".rstrip(": ")
        return Readiness(status="unavailable", reason=reason)
    queue = settings.queue_name
    if not workers:
        response.status_code = 503
        return Readiness(
            status="unavailable",
            queue=queue,
            reason=f"no worker has reported in the last {settings.worker_dead_after_s:g} s",
        )
    elsewhere = {name for name in workers if queue not in decode_queues(reports.get(name, {}).get(QUEUES_FIELD))}
    if len(elsewhere) == len(workers):
        response.status_code = 503
        others = sorted(set().union(*(decode_queues(reports.get(name, {}).get(QUEUES_FIELD)) for name in workers)))
        return Readiness(
            status="unavailable",
            queue=queue,
            workers=0,
            reason=f"no live worker consumes the queue {queue!r} that jobs are sent to (DDPM_QUEUE_NAME); "
            f"live workers consume: {', '.join(others) or 'nothing reported yet'}",
        )
    workers = [name for name in workers if name not in elsewhere]
    details = [_worker(name, reports.get(name, {})) for name in sorted(workers)]
    return Readiness(
        status="ready",
        queue=queue,
        workers=len(workers),
        queued=queued,
        compiled_buckets=sum(worker.compiled_buckets for worker in details),
        buckets=sum(worker.buckets for worker in details),
        worker_details=details,
    )


def _worker(name: str, report: dict[str, str]) -> WorkerReadiness:
    def count(field: str) -> int:
        try:
            return int(report.get(field) or 0)
        except ValueError:
            return 0

    return WorkerReadiness(
        name=name,
        device=report.get("device"),
        compiled_buckets=count("buckets_compiled"),
        buckets=count("buckets_total"),
        compile=report.get("compile"),
        compile_errors=report.get("compile_errors") or None,
    )
