"""``GET /jobs/{id}``, its PNG and GIF, each sample's own PNG, and ``DELETE /jobs/{id}`` (cancel)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response

from api import deps
from api.errors import responses
from api.schemas import CancelAnswer, JobView
from api.store import AsyncJobStore
from contract.layout import JobRecord, JobStatus

router = APIRouter(tags=["jobs"])
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MEDIA = {"png": "image/png", "gif": "image/gif"}
JobId = Annotated[str, Path(max_length=64, description="the id returned by POST /generate")]


async def load_job(store: AsyncJobStore, job_id: str) -> JobRecord:
    """The job's record, or 404."""
    record = await store.get(job_id) if JOB_ID.match(job_id) else None
    if record is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or expired after its time to live)")
    return record


READ = [Depends(deps.require_read_key)]


@router.get("/jobs/{job_id}", response_model=JobView, dependencies=READ, responses=responses(401, 404))
async def get_job(job_id: JobId, store: deps.StoreDep) -> JobView:
    """Status, progress, queue position, timestamps, the job's spec (seed, model, weights hash), error
    and its webhook's delivery."""
    record = await load_job(store, job_id)
    position = await store.position(job_id) if record.status is JobStatus.QUEUED else None
    return JobView.of(record, position, await store.webhook(record))


async def _result(job_id: str, kind: str, store: AsyncJobStore) -> Response:
    record = await load_job(store, job_id)
    if record.status is not JobStatus.SUCCEEDED:
        if not record.status.terminal:
            raise HTTPException(409, f"job {job_id} is {record.status.value}: its {kind} is not ready yet")
        raise HTTPException(409, f"job {job_id} ended {record.status.value}: it has no {kind}")
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
    dependencies=READ,
    responses={200: {"content": {"image/png": {}}, "description": "the grid"}, **responses(401, 404, 409)},
)
async def get_png(job_id: JobId, store: deps.StoreDep) -> Response:
    """The grid of samples."""
    return await _result(job_id, "png", store)


@router.get(
    "/jobs/{job_id}/gif",
    response_class=Response,
    dependencies=READ,
    responses={200: {"content": {"image/gif": {}}, "description": "the animation"}, **responses(401, 404, 409)},
)
async def get_gif(job_id: JobId, store: deps.StoreDep) -> Response:
    """The denoising animation."""
    return await _result(job_id, "gif", store)


@router.get(
    "/jobs/{job_id}/images/{index}",
    response_class=Response,
    dependencies=READ,
    responses={200: {"content": {"image/png": {}}, "description": "one sample"}, **responses(401, 404, 409)},
)
async def get_sample_image(
    job_id: JobId,
    index: Annotated[int, Path(ge=0, le=1_000_000, description="the sample's place in the grid, from 0")],
    store: deps.StoreDep,
) -> Response:
    """One sample of an image model's job as its own PNG (the images API's ``url``)."""
    record = await load_job(store, job_id)
    if record.status is not JobStatus.SUCCEEDED:
        raise HTTPException(409, f"job {job_id} is {record.status.value}: it has no images")
    data = await store.image(job_id, index)
    if data is None:
        count = await store.image_count(job_id)
        if not count:
            raise HTTPException(404, f"job {job_id} has no per-sample images (a point model, or they expired)")
        raise HTTPException(404, f"job {job_id} has images 0 to {count - 1}, not {index}")
    headers = {
        "Content-Disposition": f'inline; filename="ddpm-{job_id[:8]}-{index}.png"',
        "Cache-Control": "private, max-age=86400",
    }
    return Response(data, media_type="image/png", headers=headers)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=CancelAnswer,
    dependencies=[Depends(deps.require_api_key)],
    responses=responses(401, 404, 409),
)
async def cancel_job(job_id: JobId, store: deps.StoreDep) -> CancelAnswer:
    """Cancel a queued job at once, or a running one at its next step."""
    record = await load_job(store, job_id)
    if record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise HTTPException(409, f"job {job_id} already {record.status.value}; nothing to cancel")
    if record.status is JobStatus.CANCELLED:
        return CancelAnswer(id=job_id, status=JobStatus.CANCELLED, cancel_requested=True)
    status = await store.cancel(job_id)
    if status is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or expired after its time to live)")
    return CancelAnswer(id=job_id, status=JobStatus(status), cancel_requested=True)
