"""``POST /generate``: validate against the model, store the job, queue it."""

from __future__ import annotations

import json
import logging
import secrets
import uuid

from celery import Celery
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from api import deps
from api.errors import FieldError
from api.registry import ModelInfo, ModelRegistry, UnknownModel
from api.schemas import GenerateRequest, JobAccepted
from api.settings import Settings
from api.store import AsyncJobStore, job_links
from worker.celery_app import send_generate

logger = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])


def resolve_params(body: GenerateRequest, model: ModelInfo, settings: Settings) -> dict:
    """The job's full parameters, checked against the model; raises :class:`FieldError`."""
    classes = len(model.class_names)
    if body.digit is not None:
        if classes == 0:
            raise FieldError("digit", f"model {model.name!r} is unconditional; omit digit")
        if body.digit >= classes:
            raise FieldError("digit", f"must be between 0 and {classes - 1} for model {model.name!r}")
    if body.n > settings.max_n:
        raise FieldError("n", f"must be at most {settings.max_n}")
    total = model.num_train_timesteps
    if body.sampler == "ddim":
        steps = body.steps if body.steps is not None else min(settings.default_ddim_steps, total)
        low = min(settings.min_steps, total)
        if not low <= steps <= total:
            raise FieldError("steps", f"must be between {low} and {total} for model {model.name!r}")
    else:
        if body.steps is not None and body.steps != total:
            raise FieldError(
                "steps", f"the ddpm sampler runs all {total} training steps; use sampler 'ddim' to choose steps"
            )
        steps = total
    guidance = body.guidance if body.guidance is not None else model.default_guidance
    if guidance > settings.max_guidance:
        raise FieldError("guidance", f"must be at most {settings.max_guidance}")
    if guidance and classes == 0:
        guidance = 0.0
    return {
        "model": model.name,
        "digit": body.digit,
        "n": body.n,
        "sampler": body.sampler,
        "steps": steps,
        "guidance": float(guidance),
        "seed": body.seed if body.seed is not None else secrets.randbelow(2**31),
    }


@router.post(
    "/generate",
    status_code=202,
    response_model=JobAccepted,
    dependencies=[Depends(deps.require_api_key)],
    responses={422: {"description": "a field is invalid"}, 429: {"description": "the queue is full"}},
)
async def submit(
    body: GenerateRequest,
    request: Request,
    response: Response,
    store: AsyncJobStore = Depends(deps.store),
    settings: Settings = Depends(deps.settings),
    registry: ModelRegistry = Depends(deps.registry),
    celery: Celery = Depends(deps.celery),
) -> JobAccepted:
    """Queue a generation job; follow it at the returned links."""
    try:
        model = await run_in_threadpool(registry.get, body.model)
    except UnknownModel as error:
        raise FieldError("model", str(error)) from None
    params = resolve_params(body, model, settings)
    queued = await store.queue_length()
    if queued >= settings.max_queue:
        raise HTTPException(
            429, f"the queue is full ({queued} jobs waiting); try again later", headers={"Retry-After": "30"}
        )
    job_id = uuid.uuid4().hex
    await store.create(
        job_id,
        {
            "params": json.dumps(params),
            "seed": params["seed"],
            "model": model.name,
            "weights_sha256": model.weights_sha256,
            "total": params["steps"],
        },
    )
    try:
        await run_in_threadpool(send_generate, celery, job_id, params)
    except Exception as error:
        await store.forget(job_id)
        logger.error("could not queue job %s: %s", job_id, error)
        raise HTTPException(503, f"the job could not be queued: {error}", headers={"Retry-After": "5"}) from None
    links = job_links(job_id)
    response.headers["Location"] = links["self"]
    logger.info("job %s queued: %s", job_id, params)
    return JobAccepted(id=job_id, status="queued", queue_position=await store.position(job_id), links=links)
