"""The job spec: one generation job, resolved once by the API and run exactly so by a worker.

Every value a worker needs is decided when the job is submitted and written here: the model by
name *and* by the SHA-256 of its weights, the sampler with its exact number of timesteps, the
guidance scale actually used and the seed actually drawn. A worker reads nothing else about the
job, and refuses to run a spec whose weights it cannot load unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ddpm_core.sampler_specs import SAMPLER_NAMES, describe_samplers
from ddpm_core.seeds import MAX_SEED, check_seed

__all__ = ["MAX_REDRAW_ROUNDS", "MAX_SEED", "JobSpec", "Sampler"]
MAX_REDRAW_ROUNDS = 2  # rounds of redrawing the samples the digit check reads as another digit
Sampler = Literal[SAMPLER_NAMES]  # the registry's names (ddpm_core.sampler_specs), as one type

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class JobSpec(BaseModel):
    """What to generate. Immutable; stored with the job and sent to the worker as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1, max_length=200, description="model name (file stem in the model directory)")
    weights_sha256: Sha256 = Field(description="SHA-256 of the checkpoint file the job must run with")
    sampler: Sampler = Field(description=describe_samplers())
    steps: int = Field(ge=1, description="the exact number of denoising steps the sampler takes")
    guidance: float = Field(ge=0, allow_inf_nan=False, description="classifier-free guidance scale used")
    seed: int = Field(ge=0, le=MAX_SEED, description="base seed: sample i uses seed + i")
    digit: int | None = Field(ge=0, description="the class drawn; None: unconditional")
    n: int = Field(ge=1, description="number of samples")
    redraw_rounds: int = Field(
        0,
        ge=0,
        le=MAX_REDRAW_ROUNDS,
        description="rounds of redrawing the samples the digit check reads as another digit (0: none); "
        "round r draws sample i again with seed + n * r + i",
    )

    @model_validator(mode="after")
    def _sample_seeds_fit(self) -> JobSpec:
        """Every sample's seed (``seed + n * r + i``) is a seed of its own: none wraps around."""
        check_seed(self.seed, self.n, self.redraw_rounds)
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        return cls.model_validate_json(text)

    def sample_seed(self, index: int, redraw_round: int = 0) -> int:
        """The seed of sample ``index`` as drawn in ``redraw_round`` (0: the first draw, seed + i)."""
        return self.seed + self.n * redraw_round + index  # within MAX_SEED: checked when made

    @property
    def class_labels(self) -> list[int] | None:
        """One label per sample, or None for unconditional samples."""
        return None if self.digit is None else [self.digit] * self.n
