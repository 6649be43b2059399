"""Request dependencies (``Annotated``): the job store, settings, model registry, the Celery
sender and the API-key checks. Everything is created once in :func:`api.app.create_app`.

API keys travel in ``X-API-Key`` or ``Authorization: Bearer``; reads may also pass
``?api_key=`` (a browser's EventSource and <img> cannot send headers). The schemes are declared
so OpenAPI (and the Authorize button of ``/docs``) shows them where a key is enforced
(:mod:`api.openapi` prunes the rest).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from api import idempotency
from api.store import AsyncJobStore
from api.submit import Caller, Submitter
from contract.registry import ModelRegistry
from contract.settings import Settings


def _store(request: Request) -> AsyncJobStore:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _celery(request: Request) -> Celery:
    return request.app.state.celery


def _submitter(request: Request) -> Submitter:
    return request.app.state.submitter


StoreDep = Annotated[AsyncJobStore, Depends(_store)]
SubmitterDep = Annotated[Submitter, Depends(_submitter)]
SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
CeleryDep = Annotated[Celery, Depends(_celery)]

_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (DDPM_API_KEYS)")
_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token")
_query_key = APIKeyQuery(name="api_key", auto_error=False, description="an API key (reads only; for EventSource)")


def _check(settings: Settings, given: str | None) -> None:
    keys = settings.api_key_set
    if not keys:
        return
    if not given or not any(secrets.compare_digest(given, key) for key in keys):
        raise HTTPException(
            401,
            "a valid API key is required (X-API-Key header, or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_api_key(
    settings: SettingsDep,
    header: Annotated[str | None, Depends(_header_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When API keys are configured, writes (POST, DELETE) need one."""
    _check(settings, header or (bearer.credentials if bearer else None))


def require_read_key(
    settings: SettingsDep,
    header: Annotated[str | None, Depends(_header_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    query: Annotated[str | None, Depends(_query_key)],
) -> None:
    """With ``DDPM_PROTECT_READS`` and API keys configured, reads of jobs need one too."""
    if settings.protect_reads:
        _check(settings, header or (bearer.credentials if bearer else None) or query)


def caller(
    request: Request,
    settings: SettingsDep,
    header: Annotated[str | None, Depends(_header_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Who submits, for rate limits and idempotency scopes: the API key (when keys are
    enforced; checked by :func:`require_api_key`) and the client's address."""
    key = (header or (bearer.credentials if bearer else None)) if settings.api_key_set else None
    return Caller(api_key=key, address=request.client.host if request.client else "unknown")


def idempotency_key(
    value: Annotated[
        str | None, Header(alias=idempotency.HEADER, max_length=300, description=idempotency.DESCRIPTION)
    ] = None,
) -> str | None:
    return idempotency.parse_key(value)


CallerDep = Annotated[Caller, Depends(caller)]
IdempotencyKeyDep = Annotated[str | None, Depends(idempotency_key)]
