"""Request dependencies: the job store, settings, registry, Celery sender and API keys."""

from __future__ import annotations

from celery import Celery
from fastapi import HTTPException, Request

from api.registry import ModelRegistry
from api.settings import Settings
from api.store import AsyncJobStore


def store(request: Request) -> AsyncJobStore:
    return request.app.state.store


def settings(request: Request) -> Settings:
    return request.app.state.settings


def registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def celery(request: Request) -> Celery:
    """The Celery app used to send tasks by name (created once; no task module imported)."""
    if request.app.state.celery is None:
        from worker.celery_app import make_celery

        request.app.state.celery = make_celery(request.app.state.settings)
    return request.app.state.celery


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
