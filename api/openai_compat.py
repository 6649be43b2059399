"""The bodies of the OpenAI-compatible API (``/v1/images/generations``, ``/v1/models``), in the
shapes OpenAI's clients read.

The images request is built from the service's own generate request model
(:func:`images_request_model`): its extra fields ``sampler``, ``steps``, ``guidance`` and
``seed`` are the generate request's fields, so they validate (and show in OpenAPI) exactly as
``POST /generate`` takes them, and the request then goes through the same submit path.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from api.schemas import GenerateRequest

# the fields the images request shares with POST /generate's body
SHARED_FIELDS = ("sampler", "steps", "guidance", "seed")
UNCONDITIONAL_PROMPT = "(model {model!r} is unconditional: the prompt does not choose what it draws)"


class ImagesRequest(BaseModel):
    """``POST /v1/images/generations``: OpenAI's request, plus the service's sampler, steps,
    guidance and seed as extra body fields."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prompt: Annotated[str, Field(min_length=1, max_length=1000)] = Field(
        description="the class to draw: one of the model's class names or its index ('7', 'hero'); an "
        "unconditional model takes any prompt and ignores it"
    )
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="a model of GET /v1/models; default: the service's default model"
    )
    n: Annotated[int, Field(strict=True, ge=1)] = Field(1, description="how many images, up to the model's n_limit")
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="url: links to each image (GET /jobs/{id}/images/{i}); b64_json: the PNGs inline"
    )
    size: Annotated[str, Field(max_length=20)] | None = Field(
        None,
        description="WIDTHxHEIGHT: accepted when it is the model's own size (e.g. 28x28); the service does not resize",
    )
    user: Annotated[str, Field(max_length=200)] | None = Field(None, description="accepted and ignored")


@functools.lru_cache(maxsize=16)
def images_request_model(generate_model: type[GenerateRequest]) -> type[ImagesRequest]:
    """:class:`ImagesRequest` with ``generate_model``'s fields for sampler, steps, guidance and seed."""
    shared: dict[str, Any] = {
        name: (generate_model.model_fields[name].annotation, generate_model.model_fields[name])
        for name in SHARED_FIELDS
    }
    return create_model("ImagesRequest", __base__=ImagesRequest, __doc__=ImagesRequest.__doc__, **shared)


class ImageData(BaseModel):
    b64_json: str | None = Field(None, description="the PNG, base64 (response_format b64_json)")
    url: str | None = Field(None, description="where the PNG is (response_format url)")
    revised_prompt: str = Field(description="the class drawn, by name; or why the prompt was not used")


class ImagesResponse(BaseModel):
    """The answer of ``POST /v1/images/generations``, as OpenAI's."""

    created: int = Field(description="when the job was submitted (epoch seconds)")
    data: list[ImageData]


class ModelObject(BaseModel):
    """A model, as OpenAI lists them."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="the checkpoint file's modification time (epoch seconds)")
    owned_by: str = "ddpm-service"


class ModelObjectList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every error under /v1/, in OpenAI's shape."""

    error: OpenAIErrorDetail


OPENAI_DESCRIPTIONS = {
    400: "an invalid parameter (param names it), a malformed header or a body that is not valid JSON",
    401: "an API key is required (Authorization: Bearer)",
    404: "no such model (code model_not_found) or job",
    409: "the job was cancelled",
    413: "the request body is over the limit",
    415: "the body is not sent as application/json",
    422: "an Idempotency-Key reused with another body (code idempotency_mismatch)",
    429: "refused for now: code rate_limit_exceeded (this client's rate limit) or queue_full; retry after "
    "Retry-After seconds",
    500: "the job failed (code job_failed)",
    503: "the job store (Redis) is unavailable",
    504: "the job did not end within DDPM_IMAGES_TIMEOUT_S (code timeout); it goes on running",
}


def openai_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of these error codes, in OpenAI's shape."""
    return {code: {"model": OpenAIError, "description": OPENAI_DESCRIPTIONS[code]} for code in codes}
