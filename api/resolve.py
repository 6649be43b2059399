"""A request becomes a :class:`~contract.spec.JobSpec` here, once: the model (with its weights'
hash), the exact step count, the guidance used and the seed drawn. Torch-free and pure, apart
from drawing a seed when none is given."""

from __future__ import annotations

import secrets

from api.schemas import GenerateRequest
from contract.registry import ModelInfo
from contract.settings import Limits
from contract.spec import MAX_REDRAW_ROUNDS, JobSpec


class FieldError(Exception):
    """A request field that is well-formed but not valid for the chosen model (422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def resolve_spec(request: GenerateRequest, model: ModelInfo, limits: Limits) -> JobSpec:
    """The job ``request`` asks for on ``model``; raises :class:`FieldError`."""
    classes = len(model.class_names)
    if request.digit is not None:
        if classes == 0:
            raise FieldError("digit", f"model {model.name!r} is unconditional; omit digit")
        if request.digit >= classes:
            raise FieldError("digit", f"must be between 0 and {classes - 1} for model {model.name!r}")
    if request.n > limits.max_n:
        raise FieldError("n", f"must be at most {limits.max_n}")
    total = model.num_train_timesteps
    if request.sampler == "ddim":
        steps = request.steps if request.steps is not None else min(limits.default_ddim_steps, total)
        low = min(limits.min_steps, total)
        if not low <= steps <= total:
            raise FieldError("steps", f"must be between {low} and {total} for model {model.name!r}")
    else:
        if request.steps is not None and request.steps != total:
            raise FieldError(
                "steps", f"the ddpm sampler runs all {total} training steps; use sampler 'ddim' to choose steps"
            )
        steps = total
    guidance = request.guidance if request.guidance is not None else model.default_guidance
    if guidance > limits.max_guidance:
        raise FieldError("guidance", f"must be at most {limits.max_guidance}")
    if classes == 0:
        guidance = 0.0  # an unconditional model has nothing to guide towards
    if request.redraw_mismatches and request.digit is None:
        raise FieldError("redraw_mismatches", "needs a digit: unconditional samples have no digit to match")
    return JobSpec(
        model=model.name,
        weights_sha256=model.weights_sha256,
        sampler=request.sampler,
        steps=steps,
        guidance=float(guidance),
        seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
        digit=request.digit,
        n=request.n,
        redraw_rounds=MAX_REDRAW_ROUNDS if request.redraw_mismatches else 0,
    )
