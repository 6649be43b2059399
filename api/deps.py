"""Request dependencies (``Annotated``): the job store, settings, model registry, the Celery
sender and the API-key check. Everything is created once in :func:`api.app.create_app`."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request

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


def require_api_key(request: Request) -> None:
    """When API keys are configured, writes need ``X-API-Key`` or ``Authorization: Bearer``."""
    keys = request.app.state.settings.api_key_set
    if not keys:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given not in keys:
        raise HTTPException(
            401, "a valid API key is required (X-API-Key header)", headers={"WWW-Authenticate": "Bearer"}
        )
