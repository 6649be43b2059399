"""The webhook dispatcher: the one component that sends deliveries. It runs in every API
process (a task of the app's lifespan) and keeps nothing in memory: deliveries are made in Redis
by the transition that ends a job (:mod:`contract.webhooks`), claimed here atomically with a lease
(so several API replicas never send one at once, and one whose sender stopped mid-attempt is due
again after the lease), sent, and their outcome recorded with the next attempt's time.

Each delivery is a POST of ``{"type": "job.succeeded" | "job.failed" | "job.cancelled",
"timestamp", "data": <the job's GET /jobs/{id} body>}``, built at the first attempt and kept, so
every retry sends the same bytes under the same ``webhook-id``; each attempt is signed anew with
its own ``webhook-timestamp`` (:mod:`api.webhooks.signing`). An attempt that gets no 2xx answer
(redirects are not followed; connect and read time out after ``DDPM_WEBHOOK_TIMEOUT_S``; at most
``DDPM_WEBHOOK_MAX_RESPONSE_BYTES`` of the answer are read) is retried after an exponential
backoff with jitter, until ``DDPM_WEBHOOK_RETRY_FOR_S`` after the first attempt. A URL the guard
refuses at send time (:mod:`api.webhooks.guard`: its name may resolve elsewhere by then) is
never contacted, and its delivery is given up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time

import httpx
import redis.asyncio as aioredis

from api.schemas import JobView, iso
from api.store import AsyncJobStore
from api.webhooks.guard import AddressPolicy, GuardedTransport, URLRefused
from api.webhooks.signing import signed_headers
from contract.settings import Settings
from contract.webhooks import Deliveries, DeliveryState

logger = logging.getLogger(__name__)
USER_AGENT = "ddpm-service-webhooks/0.1"
CONCURRENCY = 16  # deliveries one dispatcher sends at once
ERROR_CHARS = 300  # of an error or an answer's body kept in the delivery's state


def retry_delay(attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: ``base * 2^(attempts-1)``,
    capped at ``max_s``, with "equal jitter" (a uniform draw in its upper half), so receivers that
    came back are not hit by every sender at the same instant."""
    ceiling = min(max_s, base_s * 2 ** max(0, attempts - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class WebhookDispatcher:
    """Claims due deliveries from Redis and sends them, until :meth:`stop`."""

    def __init__(self, client: aioredis.Redis, store: AsyncJobStore, settings: Settings, policy: AddressPolicy) -> None:
        self.client = client  # decode_responses=True
        self.store = store
        self.settings = settings
        self.key = settings.webhook_signing_key
        self.deliveries = Deliveries(client, store.keys)
        self.keys = self.deliveries.keys
        self.policy = policy
        self.lease_s = 3 * settings.webhook_timeout_s + 10  # longer than any attempt (bounded below)
        self._http: httpx.AsyncClient | None = None  # made at the first delivery
        self._stopped = asyncio.Event()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task] = set()
        self._warned = False

    async def run(self) -> None:
        """Send due deliveries every ``DDPM_WEBHOOK_POLL_S`` until stopped; Redis outages are waited out."""
        while not self._stopped.is_set():
            try:
                await self.dispatch_due()
            except Exception as error:  # Redis away: the deliveries wait in Redis meanwhile
                logger.warning("webhook dispatcher: %s: %s", type(error).__name__, error)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=self.settings.webhook_poll_s)

    async def dispatch_due(self) -> int:
        """Claim the deliveries due now (as many as there are free slots) and start sending them."""
        free = CONCURRENCY - len(self._tasks)
        if self.key is None:  # deliveries wait in Redis for an API that can sign them
            if not self._warned and await self.client.zcard(self.keys.due):
                logger.warning("webhook deliveries are due, but DDPM_WEBHOOK_SECRET is not set on this API")
                self._warned = True
            return 0
        if free <= 0:
            return 0
        ids = await self.deliveries.claim(now=time.time(), lease_s=self.lease_s, most=free)
        for job_id in ids:
            task = asyncio.create_task(self._send_one(job_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(ids)

    async def stop(self) -> None:
        self._stopped.set()
        for task in list(self._tasks):  # a cut attempt is due again after its lease
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The client of the deliveries: only to addresses the guard allows, no redirects, no proxy."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                transport=GuardedTransport(self.policy),
                timeout=httpx.Timeout(self.settings.webhook_timeout_s),
                follow_redirects=False,
                trust_env=False,
                headers={"user-agent": USER_AGENT},
            )
        return self._http

    async def _send_one(self, job_id: str) -> None:
        async with self._slots:
            try:
                await self.deliver(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # recorded nothing: the lease makes it due again
                logger.exception("webhook of job %s: the attempt could not be made", job_id)

    async def deliver(self, job_id: str) -> None:
        """One attempt of job ``job_id``'s delivery, and its outcome recorded."""
        fields = await self.client.hgetall(self.keys.delivery(job_id))
        if fields.get("state") != DeliveryState.PENDING.value:
            await self.client.zrem(self.keys.due, job_id)
            return
        message_id, body, first = await self._message(job_id, fields)
        status, error = await self._attempt(fields["url"], message_id, body)
        now = time.time()
        attempts = int(fields.get("attempts") or 0) + 1
        if status is not None and 200 <= status < 300:
            outcome, next_at = "delivered", None
        elif error.startswith("refused"):
            outcome, next_at = "given_up", None
        else:
            next_at = now + retry_delay(attempts, self.settings.webhook_backoff_s, self.settings.webhook_backoff_max_s)
            outcome = "retry" if next_at <= first + self.settings.webhook_retry_for_s else "given_up"
        ttl = int(self.settings.webhook_retry_for_s + self.settings.result_ttl_s)
        await self.deliveries.record(job_id, outcome, now=now, next_at=next_at, status=status, error=error, ttl_s=ttl)
        log = logger.info if outcome == "delivered" else logger.warning
        log("webhook %s of job %s, attempt %d: %s (%s)", message_id, job_id, attempts, outcome, error or status)

    async def _message(self, job_id: str, fields: dict[str, str]) -> tuple[str, bytes, float]:
        """The delivery's id, body and first attempt's time: made at the first attempt, then kept."""
        if fields.get("body") and fields.get("message_id"):
            return fields["message_id"], fields["body"].encode(), float(fields.get("first_attempt_at") or time.time())
        event = fields.get("event") or "job.failed"
        record = await self.store.get(job_id)
        if record is not None:
            data = JobView.of(record, None).model_dump(mode="json", exclude={"webhook"})
        else:  # the job expired before its first attempt (a long outage): say what is known
            data = {"id": job_id, "status": event.removeprefix("job.")}
        payload = {"type": event, "timestamp": iso(float(fields.get("created_at") or time.time())), "data": data}
        key = self.keys.delivery(job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(key, "message_id", f"msg_{job_id}")
        pipe.hsetnx(key, "body", json.dumps(payload, separators=(",", ":")))
        pipe.hsetnx(key, "first_attempt_at", repr(time.time()))
        pipe.hmget(key, ["message_id", "body", "first_attempt_at"])
        *_, (message_id, body, first) = await pipe.execute()
        return message_id, body.encode(), float(first)

    async def _attempt(self, url: str, message_id: str, body: bytes) -> tuple[int | None, str]:
        """POST ``body``; the answer's status (None: none) and what went wrong ('' when nothing)."""
        assert self.key is not None
        headers = signed_headers(self.key, message_id, int(time.time()), body)
        limit = self.settings.webhook_max_response_bytes

        async def post() -> tuple[int, bytes]:
            async with self.http.stream("POST", url, content=body, headers=headers) as response:
                read = bytearray()
                async for chunk in response.aiter_raw():
                    read += chunk[: limit - len(read)]
                    if len(read) >= limit:
                        break  # the rest of the answer is never read
                return response.status_code, bytes(read)

        try:  # connect and each read time out on their own; the whole attempt is bounded too
            status, read = await asyncio.wait_for(post(), timeout=2 * self.settings.webhook_timeout_s)
        except URLRefused as error:
            return None, f"refused: {error}"[:ERROR_CHARS]
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as error:
            return None, f"{type(error).__name__}: {error}"[:ERROR_CHARS]
        if 200 <= status < 300:
            return status, ""
        if 300 <= status < 400:
            return status, f"answered {status} (redirects are not followed)"
        excerpt = read.decode("utf-8", "replace").strip().replace("\n", " ")
        return status, f"answered {status}: {excerpt}"[:ERROR_CHARS]
