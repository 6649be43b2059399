"""The OpenAI-compatible API: ``POST /v1/images/generations``, ``GET /v1/models`` and ``GET
/v1/models/{id}``, for the clients people already have (OpenAI's own SDKs among them).

An images request names a class of the model in its ``prompt`` (its name or its index) and goes
through the service's one submit path (:mod:`api.submit`) as a ``POST /generate`` body would:
the same resolution, idempotency keys, rate limits and queue. The call then waits for its job
(at most ``DDPM_IMAGES_TIMEOUT_S``) and answers each sample as its own PNG, inline
(``b64_json``) or as a link (``url``: ``GET /jobs/{id}/images/{i}``). Errors come in OpenAI's
shape (:mod:`api.errors`); the same API keys are accepted as ``Authorization: Bearer``.
"""

# no ``from __future__ import annotations``: FastAPI reads the body's class from the signature

import base64
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import deps
from api.errors import mark_accepted
from api.openai_compat import (
    UNCONDITIONAL_PROMPT,
    ImageData,
    ImagesRequest,
    ImagesResponse,
    ModelObject,
    ModelObjectList,
    images_request_model,
    openai_responses,
)
from api.resolve import FieldError
from api.schemas import GenerateRequest, generate_request_model
from api.submit import Refused, Submitter
from contract.layout import JobRecord, JobStatus
from contract.metrics import Refusal
from contract.registry import ModelInfo, ModelRegistry, UnknownModel
from contract.samples import sample_kind
from contract.settings import Limits

ENDPOINT = "/v1/images/generations"
NO_RETRY = {"x-should-retry": "false"}  # OpenAI's clients would retry a 409 or a 5xx otherwise


def model_size(model: ModelInfo) -> str:
    """The model's image size as OpenAI writes sizes: WIDTHxHEIGHT."""
    height, width = model.sample_shape[-2:]
    return f"{width}x{height}"


def build_router(limits: Limits) -> APIRouter:
    """The router of the OpenAI-compatible API for requests within ``limits``."""
    generate_model = generate_request_model(limits)
    request_model = images_request_model(generate_model)
    router = APIRouter(tags=["OpenAI-compatible"])

    @router.post(
        ENDPOINT,
        response_model=ImagesResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(deps.require_api_key)],
        responses=openai_responses(400, 401, 404, 409, 413, 415, 422, 429, 500, 503, 504),
    )
    async def generate_images(
        body: Annotated[request_model, Body()],  # type: ignore[valid-type]
        request: Request,
        response: Response,
        submitter: deps.SubmitterDep,
        caller: deps.CallerDep,
        idempotency_key: deps.IdempotencyKeyDep,
    ) -> ImagesResponse:
        """Draw ``n`` images of the class ``prompt`` names, wait for them (at most
        DDPM_IMAGES_TIMEOUT_S) and answer them as OpenAI's images API does."""
        model = await _image_model(submitter.registry, body.model)
        if body.size is not None and body.size.replace(" ", "").lower() != model_size(model):
            size = model_size(model)
            raise FieldError("size", f"model {model.name!r} draws {size} images; omit size or ask for {size}")
        generate = _as_generate(generate_model, body, model)
        try:
            submitted = await submitter.submit(
                generate, caller=caller, endpoint=ENDPOINT, idempotency_key=idempotency_key, fingerprint_of=body
            )
        except FieldError as error:
            raise FieldError("prompt" if error.field in ("class", "digit") else error.field, error.message) from None
        mark_accepted(request)  # from here on, an error is the job's, not a refusal
        timeout = submitter.settings.images_timeout_s
        record = await submitter.await_end(submitted.job_id, timeout)
        response.headers.update({"X-Job-Id": submitted.job_id, "Location": f"/jobs/{submitted.job_id}"})
        response.headers.update(submitted.headers)
        record = _succeeded(record, submitted.job_id, timeout)
        data = await _images(request, submitter, record, body.response_format, _revised_prompt(record, model))
        return ImagesResponse(created=int(record.created_at), data=data)

    @router.get("/v1/models", response_model=ModelObjectList, dependencies=[Depends(deps.require_read_key)])
    async def list_models(registry: deps.RegistryDep) -> ModelObjectList:
        """The models on offer, in OpenAI's list shape (GET /models has their details)."""
        models = await run_in_threadpool(registry.list)
        return ModelObjectList(data=[_model_object(info) for info in models])

    @router.get(
        "/v1/models/{model_id}",
        response_model=ModelObject,
        dependencies=[Depends(deps.require_read_key)],
        responses=openai_responses(401, 404),
    )
    async def get_model(model_id: Annotated[str, Path(max_length=200)], registry: deps.RegistryDep) -> ModelObject:
        """One model, in OpenAI's shape."""
        try:
            info = await run_in_threadpool(registry.get, model_id)
        except UnknownModel as error:
            raise Refused(Refusal.INVALID, 404, str(error), field="model", code="model_not_found") from None
        return _model_object(info)

    return router


def _model_object(info: ModelInfo) -> ModelObject:
    try:
        created = int(info.path.stat().st_mtime)
    except OSError:
        created = 0
    return ModelObject(id=info.name, created=created)


async def _image_model(registry: ModelRegistry, name: str | None) -> ModelInfo:
    try:
        model = await run_in_threadpool(registry.get, name)
    except UnknownModel as error:
        raise Refused(Refusal.INVALID, 404, str(error), field="model", code="model_not_found") from None
    if sample_kind(model.sample_shape) != "image":
        raise FieldError("model", f"model {model.name!r} draws 2-D points, not images: use POST /generate for it")
    return model


def _as_generate(generate_model: type[GenerateRequest], body: ImagesRequest, model: ModelInfo) -> GenerateRequest:
    """The ``POST /generate`` body this request stands for (the prompt names the class)."""
    fields = body.model_dump(include={"model", "n", "sampler", "steps", "guidance", "seed"}, exclude_unset=True)
    fields["n"] = body.n
    fields["model"] = model.name
    if model.class_names:
        fields["class"] = body.prompt
    try:
        return generate_model.model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors()]
        ) from None


def _succeeded(record: JobRecord | None, job_id: str, timeout: float) -> JobRecord:
    """The job's record if it succeeded; otherwise the error it answers with."""
    if record is None:
        raise Refused(Refusal.ERROR, 404, f"job {job_id} expired before it could be answered", code="job_expired")
    if record.status is JobStatus.SUCCEEDED:
        return record
    where = f"follow it at /jobs/{job_id}"
    if record.status is JobStatus.FAILED:
        raise Refused(Refusal.ERROR, 500, f"job {job_id} failed: {record.error}", headers=NO_RETRY, code="job_failed")
    if record.status is JobStatus.CANCELLED:
        raise Refused(Refusal.ERROR, 409, f"job {job_id} was cancelled", headers=NO_RETRY, code="job_cancelled")
    raise Refused(
        Refusal.ERROR,
        504,
        f"job {job_id} is still {record.status.value} after {timeout:g} s (DDPM_IMAGES_TIMEOUT_S); it goes on: {where}",
        headers=NO_RETRY,
        code="timeout",
    )


def _revised_prompt(record: JobRecord, model: ModelInfo) -> str:
    if record.spec.digit is None:
        return UNCONDITIONAL_PROMPT.format(model=model.name)
    return model.class_names[record.spec.digit]


async def _images(
    request: Request, submitter: Submitter, record: JobRecord, response_format: str, revised: str
) -> list[ImageData]:
    data = []
    for index in range(record.spec.n):
        if response_format == "url":
            url = str(request.url_for("get_sample_image", job_id=record.id, index=str(index)))
            data.append(ImageData(url=url, revised_prompt=revised))
            continue
        png = await submitter.store.image(record.id, index)
        if png is None:
            raise Refused(Refusal.ERROR, 404, f"the images of job {record.id} have expired", code="job_expired")
        data.append(ImageData(b64_json=base64.b64encode(png).decode("ascii"), revised_prompt=revised))
    return data
