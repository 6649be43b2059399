"""Request and response bodies of the API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1
StrictInt = Annotated[int, Field(strict=True)]


class GenerateRequest(BaseModel):
    """``POST /generate``. Bounds that depend on the model (digit, steps) are checked against it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    digit: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        None, description="a class of the model; omitted: unconditional"
    )
    n: Annotated[int, Field(strict=True, ge=1, le=64)] = Field(16, description="number of samples, 1 to 64")
    sampler: Literal["ddpm", "ddim"] = Field("ddpm", description="ddpm runs all training steps; ddim takes steps")
    steps: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="DDIM steps, 10 to the model's training steps (default 50)"
    )
    guidance: Annotated[float, Field(strict=True, ge=0, le=10, allow_inf_nan=False)] | None = Field(
        None, description="classifier-free guidance scale, 0 to 10 (default: the model's)"
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = Field(
        None, description="base seed (sample i uses seed + i); omitted: random"
    )
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="model name (see GET /models); default: the shipped MNIST model"
    )


class JobLinks(BaseModel):
    self: str
    events: str
    png: str
    gif: str


class JobAccepted(BaseModel):
    """The 202 answer to ``POST /generate``."""

    id: str
    status: str
    queue_position: int | None = None
    links: JobLinks
