"""Request and response bodies of the API: every answer has a model, so ``/openapi.json``
describes it.

The generate request's bounds come from :class:`contract.settings.Limits`:
:func:`generate_request_model` builds the request class for the service's limits, so raising
``DDPM_MAX_POINTS_PER_JOB`` changes validation and the OpenAPI schema together. What depends on
the model (its classes, its own ``n`` limit, its steps) is checked in :mod:`api.resolve`.
"""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model

from contract.checkable import CheckPlan
from contract.layout import DigitCheck, JobRecord, JobStatus, JobTimings
from contract.metrics import Refusal
from contract.registry import ModelInfo
from contract.samples import SampleKind, sample_kind
from contract.settings import Limits
from contract.spec import MAX_REDRAW_ROUNDS, MAX_SEED, JobSpec, Sampler
from contract.webhooks import WebhookDelivery
from ddpm_core.sampler_specs import DEFAULT_SAMPLER, FAST_SAMPLER, SAMPLER_SPECS, SamplerSpec, describe_samplers

ClassIndex = Annotated[int, Field(strict=True, ge=0)]
ClassName = Annotated[str, Field(strict=True, min_length=1, max_length=200)]


def _class_ref_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return "index" if isinstance(value, int) else "name" if isinstance(value, str) else None


# a class by name or by index: one clear error for any other type
ClassRef = Annotated[
    Annotated[ClassIndex, Tag("index")] | Annotated[ClassName, Tag("name")],
    Discriminator(
        _class_ref_kind,
        custom_error_type="class_ref",
        custom_error_message="must be a class name (a string) or a class index (an integer >= 0)",
    ),
]


class GenerateRequest(BaseModel):
    """``POST /generate``. Bounds that depend on the model (class, n, steps) are checked against it.

    ``class`` is a field name Python reserves: in Python it is ``class_`` (construct with
    ``GenerateRequest.model_validate({"class": ...})``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    class_: ClassRef | None = Field(
        None,
        alias="class",
        description="the class to draw: one of the model's class names (GET /models: class_names) or its "
        "index; omitted: unconditional. Refused for an unconditional model",
    )
    digit: ClassIndex | None = Field(
        None,
        description="the class index, as class (named for digit models such as MNIST, whose classes are the "
        "digits 0-9); given with class, both must name the same class",
    )
    n: Annotated[int, Field(strict=True, ge=1)] = Field(16, description="number of samples")
    sampler: Sampler = Field(
        DEFAULT_SAMPLER,
        description=f"how to run the reverse process (default {DEFAULT_SAMPLER}): {describe_samplers()}",
        json_schema_extra={"x-enumDescriptions": {spec.name: spec.description for spec in SAMPLER_SPECS}},
    )
    steps: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="the sampler's steps (GET /models: steps of each model); ddpm: omit, or all training steps"
    )
    guidance: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] | None = Field(
        None, description="classifier-free guidance scale (default: the model's)"
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = Field(
        None,
        description="base seed (sample i uses seed + i, and with redraws seed + n * r + i: no sample's seed may "
        f"pass {MAX_SEED}, so the largest allowed seed is {MAX_SEED} + 1 - n * (1 + redraw rounds)); omitted: random",
    )
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="model name (see GET /models); default: the service's default model"
    )
    redraw_mismatches: Annotated[bool, Field(strict=True)] = Field(
        False,
        description=f"draw the samples the check reads as another class again, up to {MAX_REDRAW_ROUNDS} "
        "rounds, each with new seeds (sample i in round r: seed + n * r + i); needs a class",
    )
    webhook_url: Annotated[str, Field(min_length=1, max_length=2000)] | None = Field(
        None,
        description="an http(s) URL the service POSTs to when the job ends (job.succeeded, job.failed, "
        "job.cancelled), signed as Standard Webhooks says (needs DDPM_WEBHOOK_SECRET); the URL must reach a "
        "public address unless DDPM_WEBHOOK_ALLOWED_HOSTS lists it",
    )


@functools.lru_cache(maxsize=16)  # one class per set of limits, shared by the routers and apps that use it
def generate_request_model(limits: Limits) -> type[GenerateRequest]:
    """:class:`GenerateRequest` with the upper bounds of ``limits`` in its fields.

    ``n``'s bound here is the largest any model may get, declared in the schema only: each model's
    own limit (``n_limit`` in ``GET /models``) is checked when the request is resolved against the
    model, so a refusal gives the chosen model's own limit."""
    largest = limits.max_request_n
    return create_model(
        "GenerateRequest",
        __base__=GenerateRequest,
        __doc__=GenerateRequest.__doc__,
        n=(
            Annotated[int, Field(strict=True, ge=1, json_schema_extra={"maximum": largest})],
            Field(
                min(16, largest),
                description=f"number of samples, 1 to the model's limit (GET /models: n_limit): image models "
                f"at most {limits.max_n} images and {limits.max_pixels_per_job} pixels (height x width) per job, "
                f"point models at most {limits.max_points_per_job} points; default 16, or the model's limit "
                "when lower",
            ),
        ),
        steps=(
            Annotated[int, Field(strict=True, ge=fewest_steps(limits))] | None,
            Field(
                None,
                description="the sampler's steps, up to the model's training steps: "
                + "; ".join(_steps_text(spec, limits) for spec in SAMPLER_SPECS)
                + " (GET /models: steps, each model's ranges)",
            ),
        ),
        guidance=(
            Annotated[float, Field(strict=True, ge=0, le=limits.max_guidance, allow_inf_nan=False)] | None,
            Field(None, description=f"classifier-free guidance, 0 to {limits.max_guidance} (default: the model's)"),
        ),
    )


def fewest_steps(limits: Limits) -> int:
    """The fewest steps any sampler may take (the request schema's lower bound)."""
    return min(spec.fewest_steps(limits.min_steps) for spec in SAMPLER_SPECS if spec.chooses_steps)


def _steps_text(spec: SamplerSpec, limits: Limits) -> str:
    if not spec.chooses_steps:
        return f"{spec.name}: all"
    return f"{spec.name}: {spec.fewest_steps(limits.min_steps)} or more (default {spec.default_steps})"


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
    timings: JobTimings | None = Field(
        None, description="where a succeeded job's time went on its worker (seconds); null until then"
    )
    check: DigitCheck | None = Field(  # its models live in the contract: the worker writes it
        None,
        description="the per-digit check of the final samples by the evaluation classifier (in the PNG's "
        "order), or why it was skipped; null until the job has succeeded",
    )
    links: JobLinks
    webhook: WebhookDelivery | None = Field(
        None, description="the delivery of the job's webhook (attempts, last answer, state); null without one"
    )

    @classmethod
    def of(cls, record: JobRecord, position: int | None, webhook: WebhookDelivery | None = None) -> JobView:
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
            timings=record.timings,
            links=JobLinks.of(record.id),
            webhook=webhook,
        )


class CancelAnswer(BaseModel):
    """``DELETE /jobs/{id}``."""

    id: str
    status: JobStatus
    cancel_requested: bool


class StepRange(BaseModel):
    """One sampler's steps on one model: ``min`` to ``max``, ``default`` when a request gives none."""

    min: int
    max: int
    default: int

    @classmethod
    def of(cls, spec: SamplerSpec, total: int, limits: Limits) -> StepRange:
        low, high = spec.step_range(total, limits.min_steps)
        return cls(min=low, max=high, default=spec.resolve_steps(None, total, limits.min_steps))


class ModelView(BaseModel):
    """One model on offer, as ``GET /models`` shows it (never where its file is)."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    kind: SampleKind = Field(
        description="image: C x H x W samples, shown as a grid; points: 1-D samples, shown as a scatter plot"
    )
    dataset: str = Field(description="the data it was trained on")
    model_kind: str = Field(description="its network, e.g. unet or mlp")
    sample_shape: list[int]
    conditional: bool = Field(description="whether it draws a chosen class (POST /generate: class)")
    class_names: list[str] = Field(description="its classes by index; empty for an unconditional model")
    num_train_timesteps: int = Field(description="diffusion timesteps (the ddpm sampler's steps)")
    training_steps: int | None = Field(
        description="optimizer steps its weights were trained for, over all their runs; null when not recorded"
    )
    default_guidance: float = Field(description="the guidance scale used when a request gives none")
    parameter_count: int
    weights_sha256: str
    n_limit: int = Field(description="most samples one job of this model may ask for")
    steps: dict[str, StepRange] = Field(description="each sampler's steps on this model (POST /generate: steps)")
    row_seconds: float | None = Field(
        None,
        description="seconds a forward row of this model takes on a live worker now (its recent engine "
        "ticks); a job takes about steps x rows x this, its rows being n, twice n with guidance towards a "
        "class. Null until a worker has run it",
    )
    check: CheckPlan = Field(description="whether each job's samples are checked, and by what or why not")

    @classmethod
    def of(cls, info: ModelInfo, limits: Limits, check: CheckPlan, row_seconds: float | None = None) -> ModelView:
        return cls(
            **info.model_dump(),
            kind=sample_kind(info.sample_shape),
            n_limit=limits.n_limit(info.sample_shape),
            steps={spec.name: StepRange.of(spec, info.num_train_timesteps, limits) for spec in SAMPLER_SPECS},
            row_seconds=row_seconds,
            check=check,
        )


class SamplerView(BaseModel):
    """A sampler on offer (``GET /models``: samplers), from the registry ``ddpm_core.sampler_specs``."""

    name: str = Field(description="the value of POST /generate's sampler")
    title: str
    description: str
    chooses_steps: bool = Field(description="whether a request chooses its steps (false: all training steps)")
    min_steps: int | None = Field(
        description="fewest steps a request may ask for (fewer on a model trained with fewer); null: runs all"
    )
    default_steps: int | None = Field(description="steps when a request gives none; null: all training steps")
    history: int = Field(description="tensors each sample keeps between steps besides x_t (0: one-step)")
    deterministic: bool = Field(description="no noise after x_T: a seed gives the same samples every time")

    @classmethod
    def of(cls, spec: SamplerSpec, limits: Limits) -> SamplerView:
        fields = {name: getattr(spec, name) for name in cls.model_fields}
        return cls(**{**fields, "min_steps": spec.fewest_steps(limits.min_steps)})


class ModelList(BaseModel):
    """``GET /models``."""

    default: str
    models: list[ModelView]
    limits: Limits
    samplers: list[SamplerView] = Field(description="the samplers on offer, in the order the page lists them")
    default_sampler: str = Field(description="the sampler a request without one gets: the full reverse process")
    fast_sampler: str = Field(description="the page's default: close to the full reverse process in a few steps")

    @classmethod
    def of(cls, default: str, models: list[ModelView], limits: Limits) -> ModelList:
        samplers = [SamplerView.of(spec, limits) for spec in SAMPLER_SPECS]
        return cls(
            default=default,
            models=models,
            limits=limits,
            samplers=samplers,
            default_sampler=DEFAULT_SAMPLER,
            fast_sampler=FAST_SAMPLER,
        )


class KeyRequirements(BaseModel):
    """``GET /auth``: which requests need an API key (``X-API-Key`` or ``Authorization: Bearer``)."""

    writes: bool = Field(description="POST /generate and DELETE /jobs/{id} need a key")
    reads: bool = Field(description="GET /jobs/{id}, its events and results need a key (also as ?api_key=)")


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
    queue: str | None = Field(None, description="the broker queue jobs are sent to (DDPM_QUEUE_NAME)")
    workers: int | None = Field(None, description="live workers that consume that queue")
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
    """Every 4xx and 5xx answer: a one-line ``message``; 422 also lists the bad fields; a refused
    submission says why in ``reason`` (queue_full: the service is busy; rate_limited: this
    client's rate limit)."""

    message: str
    detail: list[FieldProblem] | str | None = None
    reason: Refusal | None = Field(None, description="why a submission was refused")


def iso(timestamp: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with milliseconds, or None."""
    if not timestamp:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"
