"""Error answers: every bad request gets a one-line message as JSON; never a stack trace.

Two shapes, by path: the service's own :class:`~api.schemas.ErrorBody` (``{"message", "detail",
"reason"}``), and under ``/v1/`` OpenAI's (``{"error": {"message", "type", "param", "code"}}``,
:func:`openai_error`), where schema errors are 400s as OpenAI answers them. A refused submission
carries its reason (:class:`contract.metrics.Refusal`); :func:`mark_refusal` leaves it in the
request's state for :class:`api.routes.metrics.RejectionCounter`. :func:`responses` documents
the errors per route in OpenAPI.
"""

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
from api.submit import Refused
from contract.metrics import Refusal

logger = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"
REFUSAL_STATE = "ddpm_refusal"  # the request state's key of a refusal's reason
ACCEPTED_STATE = "ddpm_accepted"  # set once a job was made: a later error is no refusal
DESCRIPTIONS = {
    400: "a malformed header, or a body that is not valid JSON",
    401: "an API key is required",
    404: "no such job (unknown, or expired after its time to live)",
    409: "the job is not in a state that allows this",
    413: "the request body is over the limit",
    415: "the body is not sent as application/json",
    422: "a field is invalid; the message names it (reason idempotency_mismatch: an Idempotency-Key reused)",
    429: "refused for now: reason queue_full (the service's queue is full) or rate_limited (this client's "
    "rate limit); retry after Retry-After seconds",
    503: "the job store (Redis) is unavailable",
}
OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large"}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each with the :class:`ErrorBody` schema."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
) -> dict[str, Any]:
    """An error in OpenAI's shape."""
    if kind is None:
        kind = OPENAI_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or OPENAI_CODES.get(status)}}


def error_payload(path: str, status: int, message: str, *, reason: Refusal | None = None) -> dict[str, Any]:
    """The body of an error answer made outside a route (the body limit, say), in the path's shape."""
    if is_openai(path):
        return openai_error(status, message, code=reason.value if reason else None)
    return {"message": message, **({"reason": reason.value} if reason else {})}


def mark_refusal(request: Request, reason: Refusal) -> None:
    setattr(request.state, REFUSAL_STATE, reason.value)


def mark_accepted(request: Request) -> None:
    setattr(request.state, ACCEPTED_STATE, True)


def _answer(
    request: Request,
    status: int,
    message: str,
    *,
    reason: Refusal | None = None,
    field: str | None = None,
    detail: Any = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> JSONResponse:
    if reason is not None:
        mark_refusal(request, reason)
    if is_openai(request.url.path):
        if status == 422 and reason in (None, Refusal.INVALID):
            status = 400  # OpenAI answers an invalid parameter with 400
        code = code or (reason.value if reason and reason not in (Refusal.INVALID, Refusal.ERROR) else None)
        body = openai_error(status, message, param=field, code=code)
        if reason is Refusal.RATE_LIMITED:
            body["error"]["type"] = "requests"
            body["error"]["code"] = "rate_limit_exceeded"
        return JSONResponse(body, status_code=status, headers=headers)
    body = {"message": message, "detail": detail}
    if reason is not None:
        body["reason"] = reason.value
    return JSONResponse(body, status_code=status, headers=headers)


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


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """The request field an error is about: a body field by its name alone (request bodies are
    flat; what follows in ``loc`` is the member of a union that failed), others by their place."""
    if loc and loc[0] == "body":
        return str(loc[1]) if len(loc) > 1 else "body"
    return ".".join(str(part) for part in loc) or "body"


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is JSON (``application/json`` or ``application/*+json``), as
    FastAPI decides whether it parses a body."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def body_problem(request: Request, exc: RequestValidationError) -> tuple[int, str] | None:
    """A body that is no JSON at all, rather than a bad field: 415 when it is not sent as JSON
    (FastAPI then validates its raw bytes: "Input should be a valid dictionary"), 400 when it
    does not parse (FastAPI names the character offset as if it were a field)."""
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            loc = list(error.get("loc", ()))
            position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
            why = (error.get("ctx") or {}).get("error") or error.get("msg", "")
            where = _position(exc.body, position) if position is not None else ""
            return 400, f"the request body is not valid JSON: {why}{where}"
    body_errors = [error for error in errors if tuple(error.get("loc", ()))[:1] == ("body",)]
    content_type = request.headers.get("content-type")
    if body_errors and request.method in ("POST", "PUT", "PATCH") and not is_json(content_type):
        got = content_type.split(";", 1)[0].strip() if content_type else "no Content-Type"
        return 415, f"the request body must be JSON sent as Content-Type: application/json (got {got})"
    return None


def _position(body: Any, offset: int) -> str:
    """`` at line L, column C (offset N)`` of ``body``: lines and columns from 1, the offset from 0."""
    text = body.decode(errors="replace") if isinstance(body, (bytes, bytearray)) else str(body or "")
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return f" at line {line}, column {column} (offset {offset})"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = body_problem(request, exc)
        if problem is not None:
            return _answer(request, problem[0], problem[1], reason=Refusal.INVALID)
        body = validation_body(list(exc.errors()))
        field = body["detail"][0]["field"] if body["detail"] else None
        return _answer(request, 422, body["message"], reason=Refusal.INVALID, field=field, detail=body["detail"])

    @app.exception_handler(FieldError)
    async def _field(request: Request, exc: FieldError) -> JSONResponse:
        body = validation_body([{"loc": ("body", exc.field), "msg": exc.message, "type": "value_error"}])
        return _answer(request, 422, body["message"], reason=Refusal.INVALID, field=exc.field, detail=body["detail"])

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return _answer(
            request, exc.status, exc.message, reason=exc.reason, field=exc.field, headers=exc.headers, code=exc.code
        )

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull) -> JSONResponse:
        headers = {"Retry-After": "30"}
        return _answer(request, 429, str(exc), reason=Refusal.QUEUE_FULL, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        headers = getattr(exc, "headers", None)
        if is_openai(request.url.path):
            return _answer(request, exc.status_code, message, headers=headers)
        return JSONResponse({"message": message, "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        message = f"the job store (Redis) is unavailable: {exc}"
        return _answer(request, 503, message, reason=Refusal.UNAVAILABLE, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _answer(request, 500, f"internal error: {type(exc).__name__}", reason=Refusal.ERROR)
