"""The FastAPI application: ``create_app()`` (for ``uvicorn --factory api.app:create_app``).

The app holds async Redis clients, the model registry (checkpoint headers, no torch), a Celery
app that only sends tasks by name (it imports nothing of the worker), the submit path
(:class:`api.submit.Submitter`, with the rate limiter and the webhook guard) and, for as long as
it runs, the webhook dispatcher (:mod:`api.webhooks.dispatcher`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff

from api.errors import install_error_handlers
from api.middleware import AllowedMethods, BodyLimit
from api.openapi import install_openapi
from api.ratelimit import RateLimiter
from api.routes import events, generate, images, jobs, metrics, page, system
from api.store import AsyncJobStore
from api.submit import Submitter
from api.webhooks.dispatcher import WebhookDispatcher
from api.webhooks.guard import AddressPolicy
from contract.registry import ModelRegistry
from contract.settings import Settings, get_settings
from contract.tasks import make_celery

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).with_name("static")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; settings default to the environment's."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        options = {
            "socket_connect_timeout": 2,
            "socket_timeout": 30,
            "health_check_interval": 15,
            # a Redis restart closes pooled connections: retry on a fresh one instead of answering 503
            "retry": AsyncRetry(ExponentialBackoff(cap=1.0, base=0.1), 4),
            "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        }
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, **options)
        raw = aioredis.Redis.from_url(settings.redis_url, **options)
        app.state.store = AsyncJobStore(client, raw, settings.key_prefix, settings.result_ttl_s)
        app.state.metrics = metrics.MetricsStore(
            client, settings.key_prefix, settings.result_ttl_s, settings.worker_dead_after_s
        )
        app.state.celery = make_celery(settings)  # sends tasks by name; includes no task module
        policy = AddressPolicy(settings.webhook_allowed_list)
        limiter = RateLimiter(settings.rate_limit, settings.redis_url, settings.key_prefix)
        app.state.submitter = Submitter(
            app.state.store, settings, app.state.registry, app.state.celery, limiter, policy
        )
        dispatcher = WebhookDispatcher(client, app.state.store, settings, policy)
        sending = asyncio.create_task(dispatcher.run(), name="webhook-dispatcher")
        logger.info("API using Redis at %s and models in %s", _redacted(settings.redis_url), settings.model_dir)
        try:
            yield
        finally:
            await dispatcher.stop()
            await sending
            await client.aclose()
            await raw.aclose()

    app = FastAPIOffline(  # /docs with Swagger UI's assets served from the package, no CDN
        title="ddpm-service",
        version="0.1.0",
        description="Generate images with denoising diffusion models: submit a job, follow its progress, "
        "fetch the PNG grid and the denoising GIF.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = ModelRegistry(settings)
    install_error_handlers(app)
    app.include_router(generate.build_router(settings.limits))
    app.include_router(images.build_router(settings.limits))
    for module in (jobs, events, system, metrics, page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_openapi(app, settings, app.state.registry)  # security where a key is enforced; the models
    app.add_middleware(AllowedMethods, router_app=app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "Last-Event-ID", "Idempotency-Key"],
            expose_headers=[
                "Location",
                "Retry-After",
                "RateLimit",
                "RateLimit-Policy",
                "Idempotent-Replayed",
                "X-Job-Id",
            ],
        )
    app.add_middleware(metrics.RejectionCounter)  # outermost: it sees every refusal, the body limit's too
    return app


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
