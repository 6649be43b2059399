"""Request and response bodies of the API: every answer has a model, so ``/openapi.json``
describes it.

The generate request's bounds come from :class:`contract.settings.Limits`:
:func:`generate_request_model` builds the request class for the service's limits, so raising
``DDPM_MAX_N`` changes validation and the OpenAPI schema together.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from contract.layout import DigitCheck, JobRecord, JobStatus
from contract.registry import ModelInfo
from contract.settings import Limits
from contract.spec import MAX_REDRAW_ROUNDS, MAX_SEED, JobSpec, Sampler


class GenerateRequest(BaseModel):
    """``POST /generate``. Bounds that depend on the model (digit, steps) are checked against it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    digit: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        None, description="a class of the model; omitted: unconditional"
    )
    n: Annotated[int, Field(strict=True, ge=1)] = Field(16, description="number of samples")
    sampler: Sampler = Field("ddpm", description="ddpm runs all training steps; ddim takes steps")
    steps: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="DDIM steps, up to the model's training steps; ddpm: omit, or the model's training steps"
    )
    guidance: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] | None = Field(
        None, description="classifier-free guidance scale (default: the model's)"
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = Field(
        None, description="base seed (sample i uses seed + i); omitted: random"
    )
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="model name (see GET /models); default: the service's default model"
    )
    redraw_mismatches: Annotated[bool, Field(strict=True)] = Field(
        False,
        description=f"draw the samples the digit check reads as another digit again, up to {MAX_REDRAW_ROUNDS} "
        "rounds, each with new seeds (sample i in round r: seed + n * r + i); needs a digit",
    )


def generate_request_model(limits: Limits) -> type[GenerateRequest]:
    """:class:`GenerateRequest` with the upper bounds of ``limits`` in its fields."""
    return create_model(
        "GenerateRequest",
        __base__=GenerateRequest,
        __doc__=GenerateRequest.__doc__,
        n=(
            Annotated[int, Field(strict=True, ge=1, le=limits.max_n)],
            Field(min(16, limits.max_n), description=f"number of samples, 1 to {limits.max_n}"),
        ),
        steps=(
            Annotated[int, Field(strict=True, ge=limits.min_steps)] | None,
            Field(
                None,
                description=f"DDIM steps, {limits.min_steps} to the model's training steps (default "
                f"{limits.default_ddim_steps}); ddpm: omit, or the model's training steps",
            ),
        ),
        guidance=(
            Annotated[float, Field(strict=True, ge=0, le=limits.max_guidance, allow_inf_nan=False)] | None,
            Field(None, description=f"classifier-free guidance, 0 to {limits.max_guidance} (default: the model's)"),
        ),
    )


class JobLinks(BaseModel):
    self: str
    events: str
    png: str
    gif: str

    @classmethod
    def of(cls, job_id: str) -> JobLinks:
        root = f"/jobs/{job_id}"
        return cls(self=root, events=f"{root}/events", png=f"{root}/png", gif=f"{root}/gif")


class JobAccepted(BaseModel):
    """The 202 answer to ``POST /generate``."""

    id: str
    status: JobStatus
    queue_position: int | None = None
    links: JobLinks


class Progress(BaseModel):
    step: int
    total: int


class JobView(BaseModel):
    """``GET /jobs/{id}``: the job's state and the spec it runs."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: JobStatus
    progress: Progress
    queue_position: int | None = Field(description="1 for the next job to run; null unless queued")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    params: JobSpec = Field(description="everything the job runs with, resolved when it was submitted")
    seed: int
    model: str
    weights_sha256: str
    attempts: int
    cancel_requested: bool
    error: str | None
    check: DigitCheck | None = Field(  # its models live in the contract: the worker writes it
        None,
        description="the per-digit check of the final samples by the evaluation classifier (in the PNG's "
        "order), or why it was skipped; null until the job has succeeded",
    )
    links: JobLinks

    @classmethod
    def of(cls, record: JobRecord, position: int | None) -> JobView:
        return cls(
            id=record.id,
            status=record.status,
            progress=Progress(step=record.step, total=record.total),
            queue_position=position if record.status is JobStatus.QUEUED else None,
            created_at=iso(record.created_at),
            started_at=iso(record.started_at),
            finished_at=iso(record.finished_at),
            params=record.spec,
            seed=record.spec.seed,
            model=record.spec.model,
            weights_sha256=record.spec.weights_sha256,
            attempts=record.attempts,
            cancel_requested=record.cancel_requested,
            error=record.error,
            check=record.check,
            links=JobLinks.of(record.id),
        )


class CancelAnswer(BaseModel):
    """``DELETE /jobs/{id}``."""

    id: str
    status: JobStatus
    cancel_requested: bool


class ModelList(BaseModel):
    """``GET /models``."""

    default: str
    models: list[ModelInfo]
    limits: Limits


class Health(BaseModel):
    status: str


class WorkerReadiness(BaseModel):
    """One live worker as ``/readyz`` shows it."""

    name: str
    device: str | None = Field(None, description="where it runs its models, e.g. cpu or cuda:0")
    compiled_buckets: int = Field(0, description="forward batch sizes that run compiled code")
    buckets: int = Field(0, description="forward batch sizes in all (the others run eagerly until compiled)")
    compile: str | None = Field(None, description="how it compiles: aot, inprocess or off")
    compile_errors: str | None = Field(None, description="why compiling stopped for a model, if it did")


class Readiness(BaseModel):
    """``GET /readyz``: ready (200), or unavailable with the reason (503)."""

    status: str
    reason: str | None = None
    workers: int | None = None
    queued: int | None = None
    compiled_buckets: int | None = Field(None, description="compiled forward buckets, all live workers together")
    buckets: int | None = Field(None, description="forward buckets, all live workers together")
    worker_details: list[WorkerReadiness] | None = None


class FieldProblem(BaseModel):
    loc: list[Any]
    field: str
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: a one-line ``message``; 422 also lists the bad fields."""

    message: str
    detail: list[FieldProblem] | str | None = None


def iso(timestamp: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with milliseconds, or None."""
    if not timestamp:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"
