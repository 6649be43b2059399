"""``POST /generate``: resolve the request into a job spec, store the job, queue it.

The request schema is built from the service's limits (:func:`api.schemas.generate_request_model`),
so this router is made per app by :func:`build_router`.
"""

# no ``from __future__ import annotations``: FastAPI reads the body's class from the signature

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Response
from fastapi.concurrency import run_in_threadpool

from api import deps
from api.errors import responses
from api.resolve import FieldError, resolve_spec
from api.schemas import JobAccepted, JobLinks, generate_request_model
from contract.layout import JobStatus
from contract.registry import UnknownModel
from contract.settings import Limits
from contract.tasks import send_generate

logger = logging.getLogger(__name__)


def build_router(limits: Limits) -> APIRouter:
    """The router of ``POST /generate`` for requests within ``limits``."""
    request_model = generate_request_model(limits)
    router = APIRouter(tags=["jobs"])

    @router.post(
        "/generate",
        status_code=202,
        response_model=JobAccepted,
        dependencies=[Depends(deps.require_api_key)],
        responses=responses(400, 401, 413, 422, 429, 503),
    )
    async def submit(
        body: Annotated[request_model, Body()],  # type: ignore[valid-type]
        response: Response,
        store: deps.StoreDep,
        settings: deps.SettingsDep,
        registry: deps.RegistryDep,
        celery: deps.CeleryDep,
    ) -> JobAccepted:
        """Queue a generation job; follow it at the returned links."""
        try:
            model = await run_in_threadpool(registry.get, body.model)
        except UnknownModel as error:
            raise FieldError("model", str(error)) from None
        spec = resolve_spec(body, model, settings.limits)
        job_id = uuid.uuid4().hex
        position = await store.create(job_id, spec, settings.max_queue)
        try:
            await run_in_threadpool(send_generate, celery, job_id, spec)
        except Exception as error:
            await store.forget(job_id)
            logger.error("could not queue job %s: %s", job_id, error)
            raise HTTPException(503, f"the job could not be queued: {error}", headers={"Retry-After": "5"}) from None
        links = JobLinks.of(job_id)
        response.headers["Location"] = links.self
        logger.info("job %s queued at position %d: %s", job_id, position, spec.to_json())
        return JobAccepted(id=job_id, status=JobStatus.QUEUED, queue_position=position, links=links)

    return router
