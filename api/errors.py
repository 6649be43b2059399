"""Error answers: every bad request gets a JSON :class:`~api.schemas.ErrorBody` with a one-line
``message``; never a stack trace. :func:`responses` documents them per route in OpenAPI."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.resolve import FieldError
from api.schemas import ErrorBody
from api.store import QueueFull

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    400: "a malformed header",
    401: "an API key is required",
    404: "no such job (unknown, or expired after its time to live)",
    409: "the job is not in a state that allows this",
    413: "the request body is over the limit",
    422: "a field is invalid; the message names it",
    429: "the queue is full; retry after Retry-After seconds",
    503: "the job store (Redis) is unavailable",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each with the :class:`ErrorBody` schema."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """The request field an error is about: a body field by its name alone (request bodies are
    flat; what follows in ``loc`` is the member of a union that failed), others by their place."""
    if loc and loc[0] == "body":
        return str(loc[1]) if len(loc) > 1 else "body"
    return ".".join(str(part) for part in loc) or "body"


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422 body: ``message`` names each bad field; ``detail`` lists them."""
    detail = [
        {
            "loc": list(error.get("loc", ())),
            "field": _field_name(error.get("loc", ())),
            "msg": error.get("msg", ""),
            "type": error.get("type", "value_error"),
        }
        for error in errors
    ]
    message = "; ".join(f"{item['field']}: {item['msg']}" for item in detail)
    return {"message": f"invalid request: {message}", "detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(FieldError)
    async def _field(request: Request, exc: FieldError) -> JSONResponse:
        error = {"loc": ("body", exc.field), "msg": exc.message, "type": "value_error"}
        return JSONResponse(validation_body([error]), status_code=422)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"message": str(exc)}, status_code=429, headers={"Retry-After": "30"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONResponse(
            {"message": message, "detail": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"message": f"the job store (Redis) is unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"message": f"internal error: {type(exc).__name__}"}, status_code=500)
