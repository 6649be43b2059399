"""A request becomes a :class:`~contract.spec.JobSpec` here, once: the model (with its weights'
hash), the class index, the sample count within the model's limit, the exact step count, the
guidance used and the seed drawn. Torch-free and pure, apart from drawing a seed when none is
given."""

from __future__ import annotations

import secrets

from api.schemas import GenerateRequest
from contract.registry import ModelInfo
from contract.samples import sample_kind
from contract.settings import Limits
from contract.spec import MAX_REDRAW_ROUNDS, JobSpec
from ddpm_core.sampler_specs import check_class_label, sampler_spec
from ddpm_core.seeds import seed_problem

DEFAULT_N = 16
LISTED_CLASSES = 20  # an error lists at most this many class names


class FieldError(Exception):
    """A request field that is well-formed but not valid for the chosen model (422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def resolve_spec(request: GenerateRequest, model: ModelInfo, limits: Limits) -> JobSpec:
    """The job ``request`` asks for on ``model``; raises :class:`FieldError`."""
    class_index = resolve_class(request, model)
    n = resolve_n(request, model, limits)
    try:
        steps = sampler_spec(request.sampler).resolve_steps(request.steps, model.num_train_timesteps, limits.min_steps)
    except ValueError as error:
        raise FieldError("steps", f"{error} (model {model.name!r})") from None
    guidance = request.guidance if request.guidance is not None else model.default_guidance
    if guidance > limits.max_guidance:
        raise FieldError("guidance", f"must be at most {limits.max_guidance}")
    if not model.class_names:
        guidance = 0.0  # an unconditional model has nothing to guide towards
    if request.redraw_mismatches and class_index is None:
        raise FieldError("redraw_mismatches", "needs a class: unconditional samples have no class to match")
    redraw_rounds = MAX_REDRAW_ROUNDS if request.redraw_mismatches else 0
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    problem = seed_problem(seed, n, redraw_rounds)
    if problem is not None:
        raise FieldError("seed", problem)
    return JobSpec(
        model=model.name,
        weights_sha256=model.weights_sha256,
        sampler=request.sampler,
        steps=steps,
        guidance=float(guidance),
        seed=seed,
        digit=class_index,  # the wire name of the class index (workers read spec.digit)
        n=n,
        redraw_rounds=redraw_rounds,
    )


def resolve_class(request: GenerateRequest, model: ModelInfo) -> int | None:
    """The class index ``class`` (a name or an index) and ``digit`` (an index) ask for; None:
    unconditional. Both given must agree."""
    by_class = None if request.class_ is None else _class_index(request.class_, model)
    if request.digit is not None:
        if not model.class_names:
            raise FieldError("digit", f"model {model.name!r} is unconditional; omit digit")
        try:
            check_class_label(request.digit, len(model.class_names))
        except ValueError as error:
            raise FieldError("digit", f"{error} for model {model.name!r}") from None
        if by_class is not None and by_class != request.digit:
            raise FieldError(
                "class",
                f"class {request.class_!r} (index {by_class}) and digit {request.digit} disagree; give one of them",
            )
        return request.digit
    return by_class


def _class_index(wanted: int | str, model: ModelInfo) -> int:
    names = model.class_names
    if not names:
        raise FieldError("class", f"model {model.name!r} is unconditional; omit class")
    if isinstance(wanted, int):
        if wanted >= len(names):
            raise FieldError(
                "class",
                f"index {wanted} is out of range: model {model.name!r} has {len(names)} classes "
                f"(0 to {len(names) - 1}): {_listed(names)}",
            )
        return wanted
    text = wanted.strip()  # as ``ddpm sample --class`` reads it: a name, else an index written out
    if text in names:
        return names.index(text)
    if text.isascii() and text.isdigit() and int(text) < len(names):
        return int(text)
    raise FieldError(
        "class",
        f"unknown class {wanted!r} for model {model.name!r}; its classes: {_listed(names)} "
        f"(or an index 0 to {len(names) - 1})",
    )


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED_CLASSES])
    return shown if len(names) <= LISTED_CLASSES else f"{shown}, ... ({len(names)} in all)"


def resolve_n(request: GenerateRequest, model: ModelInfo, limits: Limits) -> int:
    """The sample count: as asked, within the model's limit; omitted: 16, or the limit when lower."""
    limit = limits.n_limit(model.sample_shape)
    if "n" not in request.model_fields_set:
        return min(DEFAULT_N, limit)
    if request.n > limit:
        raise FieldError("n", f"must be at most {limit} for model {model.name!r} ({_why(model, limits)})")
    return request.n


def _why(model: ModelInfo, limits: Limits) -> str:
    if sample_kind(model.sample_shape) == "points":
        return f"points per job: DDPM_MAX_POINTS_PER_JOB={limits.max_points_per_job}"
    size = "x".join(str(side) for side in model.sample_shape)
    return (
        f"{size} images: DDPM_MAX_PIXELS_PER_JOB={limits.max_pixels_per_job} pixels, "
        f"DDPM_MAX_N={limits.max_n} images per job"
    )
