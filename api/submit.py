"""The one submit path: every endpoint that creates a job (``POST /generate``, ``POST
/v1/images/generations``) calls :meth:`Submitter.submit`, which

1. answers a request whose ``Idempotency-Key`` already made a job with that job
   (:mod:`api.idempotency`; nothing else below is done again, nor counted against the rate limit);
2. resolves the request against its model into a :class:`~contract.spec.JobSpec`
   (:mod:`api.resolve`);
3. checks the webhook URL, if any (:mod:`api.webhooks.guard`);
4. counts the submission against the client's rate limit (:mod:`api.ratelimit`);
5. creates the job atomically with the queue cap (and with its idempotency record), and
6. sends its task to the broker.

A refusal is an exception that carries its reason (:class:`contract.metrics.Refusal`): the error
handlers (:mod:`api.errors`) answer it in the endpoint's shape and tell the metrics why.
:meth:`Submitter.await_end` waits for a job's end (the images endpoint answers with its results).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field

from celery import Celery
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from api import idempotency
from api.ratelimit import RateLimited, RateLimiter, RateState
from api.resolve import FieldError, resolve_spec
from api.schemas import GenerateRequest
from api.store import AsyncJobStore, Created, IdempotencyMismatch, QueueFull
from api.webhooks.guard import AddressPolicy, URLRefused
from contract.layout import JobRecord
from contract.metrics import Refusal
from contract.registry import ModelInfo, ModelRegistry, UnknownModel
from contract.settings import Settings
from contract.spec import JobSpec
from contract.tasks import send_generate

logger = logging.getLogger(__name__)
QUEUE_FULL_RETRY_S = 30


class Refused(Exception):
    """A submission refused for ``reason``, answered with ``status`` (and ``field``, the request
    field at fault, if any). The images endpoint also answers its job's end with it (after
    :func:`api.errors.mark_accepted`, so it is not counted as a refusal)."""

    def __init__(
        self,
        reason: Refusal,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.code = code  # OpenAI's error code, where it is not the reason


@dataclass(frozen=True)
class Caller:
    """Who submits: the API key it sent (when keys are enforced) and its address."""

    api_key: str | None
    address: str

    @property
    def rate_scope(self) -> str:
        """Rate limits count per API key, else per client address."""
        return f"key:{_digest(self.api_key)}" if self.api_key else f"addr:{self.address}"

    @property
    def idempotency_scope(self) -> str:
        """Idempotency keys are scoped per API key (one shared scope without keys)."""
        return f"key:{_digest(self.api_key)}" if self.api_key else "open"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Submitted:
    """A job made (or, ``replayed``, found by its Idempotency-Key)."""

    job_id: str
    position: int
    replayed: bool
    rate: RateState = field(default_factory=lambda: RateState(()))

    @property
    def headers(self) -> dict[str, str]:
        """The rate limit fields, and whether this answer is a replay."""
        headers = dict(self.rate.headers)
        if self.replayed:
            headers[idempotency.REPLAYED_HEADER] = "true"
        return headers


class Submitter:
    """The submit path over the app's store, settings, models, broker and rate limiter."""

    def __init__(
        self,
        store: AsyncJobStore,
        settings: Settings,
        registry: ModelRegistry,
        celery: Celery,
        limiter: RateLimiter,
        webhooks: AddressPolicy,
    ) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.celery = celery
        self.limiter = limiter
        self.webhooks = webhooks

    async def model(self, name: str | None) -> ModelInfo:
        """The model ``name`` (None: the default); :class:`FieldError` on ``model`` when unknown."""
        try:
            return await run_in_threadpool(self.registry.get, name)
        except UnknownModel as error:
            raise FieldError("model", str(error)) from None

    async def submit(
        self,
        request: GenerateRequest,
        *,
        caller: Caller,
        endpoint: str,
        idempotency_key: str | None = None,
        fingerprint_of: BaseModel | None = None,
    ) -> Submitted:
        """Make the job ``request`` asks for (see the module's steps). ``fingerprint_of`` is the
        body the client sent, when it is not ``request`` itself (the images endpoint's).

        Raises :class:`FieldError` and :class:`Refused`."""
        record_key = fingerprint = None
        if idempotency_key is not None:
            record_key = self.store.keys.idempotency(caller.idempotency_scope, idempotency.digest(idempotency_key))
            fingerprint = idempotency.fingerprint(endpoint, fingerprint_of or request)
            found = await self._recorded(record_key, fingerprint)
            if found is not None:
                return Submitted(found.job_id, found.position, replayed=True)
        model = await self.model(request.model)
        spec = resolve_spec(request, model, self.settings.limits)
        if request.webhook_url is not None:
            await self.check_webhook(request.webhook_url)
        rate = await self._count(caller)
        try:
            created = await self._create(spec, request.webhook_url, record_key, fingerprint)
        except QueueFull as error:
            headers = {"Retry-After": str(QUEUE_FULL_RETRY_S), **rate.headers}
            raise Refused(Refusal.QUEUE_FULL, 429, str(error), headers=headers) from None
        if not created.replayed:
            await self._send(created.job_id, spec, record_key)
            logger.info("job %s queued at position %d: %s", created.job_id, created.position, spec.to_json())
        return Submitted(created.job_id, created.position, created.replayed, rate)

    async def check_webhook(self, url: str) -> None:
        if not self.settings.webhook_secret:
            raise Refused(
                Refusal.WEBHOOK_REFUSED,
                422,
                "webhooks are not configured: set DDPM_WEBHOOK_SECRET to a Standard Webhooks secret "
                "(whsec_ and base64) on the service to use webhook_url",
                field="webhook_url",
            )
        try:
            await self.webhooks.check_url(url)
        except URLRefused as error:
            raise Refused(Refusal.WEBHOOK_REFUSED, 422, f"refused: {error}", field="webhook_url") from None

    async def _recorded(self, record_key: str, fingerprint: str) -> Created | None:
        try:
            return await self.store.recorded(record_key, fingerprint)
        except IdempotencyMismatch as error:
            raise Refused(Refusal.IDEMPOTENCY_MISMATCH, 422, str(error), field=idempotency.HEADER) from None

    async def _count(self, caller: Caller) -> RateState:
        try:
            return await self.limiter.hit(caller.rate_scope)
        except RateLimited as error:
            raise Refused(Refusal.RATE_LIMITED, 429, str(error), headers=error.headers) from None

    async def _create(
        self, spec: JobSpec, webhook_url: str | None, record_key: str | None, fingerprint: str | None
    ) -> Created:
        job_id = uuid.uuid4().hex
        max_queue = self.settings.max_queue
        if record_key is None or fingerprint is None:
            position = await self.store.create(job_id, spec, max_queue, webhook_url=webhook_url)
            return Created(job_id, position, replayed=False)
        try:
            return await self.store.create_once(
                job_id,
                spec,
                max_queue,
                record_key=record_key,
                record_ttl_s=self.settings.idempotency_ttl_s,
                fingerprint=fingerprint,
                webhook_url=webhook_url,
            )
        except IdempotencyMismatch as error:
            raise Refused(Refusal.IDEMPOTENCY_MISMATCH, 422, str(error), field=idempotency.HEADER) from None

    async def _send(self, job_id: str, spec: JobSpec, record_key: str | None) -> None:
        try:
            await run_in_threadpool(send_generate, self.celery, job_id, spec)
        except Exception as error:
            await self.store.forget(job_id)
            if record_key is not None:
                await self.store.forget_record(record_key, job_id)
            logger.error("could not queue job %s: %s", job_id, error)
            raise Refused(
                Refusal.UNAVAILABLE, 503, f"the job could not be queued: {error}", headers={"Retry-After": "5"}
            ) from None

    async def await_end(self, job_id: str, timeout_s: float) -> JobRecord | None:
        """The job's record once it has ended, or as it is after ``timeout_s`` (None: it expired)."""
        return await self.store.wait_ended(job_id, timeout_s)
