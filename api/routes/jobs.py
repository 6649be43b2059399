"""``GET /jobs/{id}``, its PNG and GIF, and ``DELETE /jobs/{id}`` (cancel)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, HTTPException, Path, Response

from api import deps
from api.store import TERMINAL, AsyncJobStore, public_job

router = APIRouter(tags=["jobs"])
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MEDIA = {"png": "image/png", "gif": "image/gif"}


async def load_job(store: AsyncJobStore, job_id: str) -> dict[str, str]:
    """The job's record, or 404."""
    record = await store.get(job_id) if JOB_ID.match(job_id) else None
    if record is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or expired after its time to live)")
    return record


@router.get("/jobs/{job_id}")
async def get_job(job_id: str = Path(..., max_length=64), store: AsyncJobStore = Depends(deps.store)) -> dict:
    """Status, progress, queue position, timestamps, parameters, seed, model and error."""
    record = await load_job(store, job_id)
    position = await store.position(job_id) if record.get("status") == "queued" else None
    return public_job(job_id, record, position)


async def _result(job_id: str, kind: str, store: AsyncJobStore) -> Response:
    record = await load_job(store, job_id)
    status = record.get("status")
    if status != "succeeded":
        if status not in TERMINAL:
            raise HTTPException(409, f"job {job_id} is {status}: its {kind} is not ready yet")
        raise HTTPException(409, f"job {job_id} ended {status}: it has no {kind}")
    data = await store.result(job_id, kind)
    if data is None:
        raise HTTPException(404, f"the {kind} of job {job_id} has expired")
    headers = {
        "Content-Disposition": f'inline; filename="ddpm-{job_id[:8]}.{kind}"',
        "Cache-Control": "private, max-age=86400",
    }
    return Response(data, media_type=MEDIA[kind], headers=headers)


@router.get(
    "/jobs/{job_id}/png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 409: {"description": "not finished"}},
)
async def get_png(job_id: str, store: AsyncJobStore = Depends(deps.store)) -> Response:
    """The grid of samples."""
    return await _result(job_id, "png", store)


@router.get(
    "/jobs/{job_id}/gif",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}}, 409: {"description": "not finished"}},
)
async def get_gif(job_id: str, store: AsyncJobStore = Depends(deps.store)) -> Response:
    """The denoising animation."""
    return await _result(job_id, "gif", store)


@router.delete("/jobs/{job_id}", status_code=202, dependencies=[Depends(deps.require_api_key)])
async def cancel_job(job_id: str, store: AsyncJobStore = Depends(deps.store)) -> dict:
    """Cancel a queued job at once, or a running one at its next step."""
    record = await load_job(store, job_id)
    status = record.get("status")
    if status in ("succeeded", "failed"):
        raise HTTPException(409, f"job {job_id} already {status}; nothing to cancel")
    if status == "cancelled":
        return {"id": job_id, "status": "cancelled"}
    status = await store.cancel(job_id)
    return {"id": job_id, "status": status, "cancel_requested": True}
