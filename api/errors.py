"""Error responses: every bad request gets a JSON body with a one-line ``message``."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class FieldError(Exception):
    """A request field that is well-formed but not valid for the chosen model (422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part != "body"]
    return ".".join(parts) or "body"


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
