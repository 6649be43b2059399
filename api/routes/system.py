"""``GET /models``, ``GET /healthz`` (alive) and ``GET /readyz`` (Redis and a worker)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import deps
from api.registry import ModelRegistry
from api.settings import Settings
from api.store import AsyncJobStore

router = APIRouter(tags=["service"])


@router.get("/models")
async def list_models(
    registry: ModelRegistry = Depends(deps.registry), settings: Settings = Depends(deps.settings)
) -> dict:
    """The models on offer, read from their checkpoint headers."""
    models = await run_in_threadpool(registry.list)
    return {
        "default": registry.default_name(),
        "models": [model.public() for model in models],
        "limits": {
            "max_n": settings.max_n,
            "min_steps": settings.min_steps,
            "max_guidance": settings.max_guidance,
            "default_ddim_steps": settings.default_ddim_steps,
        },
    }


@router.get("/healthz")
async def healthz() -> dict:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable or no worker"}})
async def readyz(store: AsyncJobStore = Depends(deps.store)) -> JSONResponse:
    """Ready when Redis answers and at least one worker sent a heartbeat recently."""
    try:
        await asyncio.wait_for(store.client.ping(), timeout=3)
        workers = await asyncio.wait_for(store.live_workers(), timeout=3)
        queued = await store.queue_length()
    except Exception as error:  # any failure to reach Redis means not ready
        reason = f"Redis is unreachable: {type(error).__name__}: {error}".rstrip(": ")
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    if not workers:
        return JSONResponse(
            {"status": "unavailable", "reason": "no worker has reported in the last 15 s"}, status_code=503
        )
    return JSONResponse({"status": "ready", "workers": len(workers), "queued": queued})
