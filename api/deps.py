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
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from api.store import AsyncJobStore
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


StoreDep = Annotated[AsyncJobStore, Depends(_store)]
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
            401, "a valid API key is required (X-API-Key header)", headers={"WWW-Authenticate": "Bearer"}
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
