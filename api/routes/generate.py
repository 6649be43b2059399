"""``POST /generate``: the submit path (:mod:`api.submit`: resolve, idempotency, rate limit,
create, send) for the service's own request body.

The request schema is built from the service's limits (:func:`api.schemas.generate_request_model`),
so this router is made per app by :func:`build_router`.
"""

# no ``from __future__ import annotations``: FastAPI reads the body's class from the signature

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response

from api import deps
from api.errors import responses
from api.schemas import JobAccepted, JobLinks, generate_request_model
from contract.layout import JobStatus
from contract.settings import Limits


def build_router(limits: Limits) -> APIRouter:
    """The router of ``POST /generate`` for requests within ``limits``."""
    request_model = generate_request_model(limits)
    router = APIRouter(tags=["jobs"])

    @router.post(
        "/generate",
        status_code=202,
        response_model=JobAccepted,
        dependencies=[Depends(deps.require_api_key)],
        responses=responses(400, 401, 413, 415, 422, 429, 503),
    )
    async def submit(
        body: Annotated[request_model, Body()],  # type: ignore[valid-type]
        response: Response,
        submitter: deps.SubmitterDep,
        caller: deps.CallerDep,
        idempotency_key: deps.IdempotencyKeyDep,
    ) -> JobAccepted:
        """Queue a generation job; follow it at the returned links. With an ``Idempotency-Key``, a
        retry of the same request gives this answer again instead of a second job."""
        submitted = await submitter.submit(body, caller=caller, endpoint="/generate", idempotency_key=idempotency_key)
        links = JobLinks.of(submitted.job_id)
        response.headers.update({"Location": links.self, **submitted.headers})
        return JobAccepted(id=submitted.job_id, status=JobStatus.QUEUED, queue_position=submitted.position, links=links)

    return router
