"""The job state machine, in-process against a real Redis: every transition script, the spec's
round trip, queue positions, and the queue cap under concurrent submissions."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from api.store import AsyncJobStore, QueueFull
from contract.layout import JobStatus
from contract.settings import Settings
from contract.spec import JobSpec
from serve.redis_server import EmbeddedRedis
from worker.store import JobStore

SPEC = JobSpec(model="mnist", weights_sha256="ab" * 32, sampler="ddim", steps=20, guidance=0.5, seed=7, digit=3, n=4)


@pytest.fixture()
def settings(redis_server: EmbeddedRedis) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return Settings(
        redis_url=redis_server.url, key_prefix=prefix, stale_after_s=60, worker_dead_after_s=5, max_attempts=2
    )


def create(settings: Settings, spec: JobSpec = SPEC, max_queue: int = 32, count: int = 1) -> list[str | Exception]:
    """Submit ``count`` jobs concurrently through the API's store; ids, or the error raised."""

    async def main() -> list[str | Exception]:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        raw = aioredis.Redis.from_url(settings.redis_url)
        store = AsyncJobStore(client, raw, settings.key_prefix, settings.result_ttl_s)

        async def one() -> str:
            job_id = uuid.uuid4().hex
            await store.create(job_id, spec, max_queue)
            return job_id

        try:
            return await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        finally:
            await client.aclose()
            await raw.aclose()

    return asyncio.run(main())


def events(store: JobStore, job_id: str) -> list[str]:
    return [fields["event"] for _, fields in store.client.xrange(store.keys.events(job_id))]


def test_the_spec_round_trips_through_the_job_record(settings: Settings, worker_store: JobStore) -> None:
    (job_id,) = create(settings)
    record = worker_store.get(job_id)
    assert record is not None and record.spec == SPEC and record.status is JobStatus.QUEUED
    assert record.total == SPEC.steps and record.attempts == 0 and events(worker_store, job_id) == ["queued"]
    assert JobSpec.from_json(SPEC.to_json()) == SPEC
    with pytest.raises(ValueError):
        JobSpec.model_validate({**SPEC.model_dump(), "weights_sha256": "not-a-hash"})


def test_claim_then_finish_once(settings: Settings, worker_store: JobStore) -> None:
    (job_id,) = create(settings)
    worker_store.worker_alive("w1")
    assert worker_store.claim(job_id, "w1").code == 1
    assert worker_store.claim(job_id, "w2").code == 0  # w1 is alive and beating
    record = worker_store.get(job_id)
    assert record.status is JobStatus.RUNNING and record.worker == "w1" and record.attempts == 1
    assert worker_store.client.sismember(worker_store.keys.running, job_id)
    assert worker_store.succeed(job_id, b"png", b"gif", 1.5)
    assert not worker_store.fail(job_id, "too late")  # a finished job stays finished
    record = worker_store.get(job_id)
    assert record.status is JobStatus.SUCCEEDED and record.error is None and record.seconds == 1.5
    assert events(worker_store, job_id) == ["queued", "running", "succeeded"]
    assert not worker_store.client.sismember(worker_store.keys.running, job_id)
    assert worker_store.raw.get(worker_store.keys.result(job_id, "png")) == b"png"


def test_a_dead_workers_job_is_claimable_at_once_and_attempts_are_bounded(
    settings: Settings, worker_store: JobStore
) -> None:
    (job_id,) = create(settings)
    worker_store.worker_alive("dead")
    assert worker_store.claim(job_id, "dead").claimed
    # its heartbeat is fresh, but its worker stopped reporting more than worker_dead_after_s ago
    worker_store.client.zadd(worker_store.keys.workers, {"dead": time.time() - 6})
    (requeued,) = worker_store.requeue_abandoned()
    assert requeued.id == job_id and requeued.spec == SPEC and worker_store.get(job_id).status is JobStatus.QUEUED
    worker_store.worker_alive("w2")
    assert worker_store.claim(job_id, "w2").code == 2  # the second attempt
    worker_store.client.zrem(worker_store.keys.workers, "w2")
    worker_store.requeue_abandoned()
    claim = worker_store.claim(job_id, "w3")
    assert claim.out_of_attempts and not claim.claimed  # max_attempts = 2


def test_a_live_workers_job_is_not_requeued(settings: Settings, worker_store: JobStore) -> None:
    (job_id,) = create(settings)
    worker_store.worker_alive("w1")
    worker_store.claim(job_id, "w1")
    assert worker_store.requeue_abandoned() == []
    # a stale heartbeat alone also makes it abandoned
    worker_store.client.hset(worker_store.keys.job(job_id), "heartbeat_at", repr(time.time() - 61))
    assert [record.id for record in worker_store.requeue_abandoned()] == [job_id]


def test_cancel_a_queued_job_and_flag_a_running_one(settings: Settings, worker_store: JobStore) -> None:
    queued, running = create(settings, count=2)
    worker_store.worker_alive("w1")
    worker_store.claim(running, "w1")

    async def cancel(job_id: str) -> str | None:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = AsyncJobStore(client, client, settings.key_prefix, settings.result_ttl_s)
        try:
            return await store.cancel(job_id)
        finally:
            await client.aclose()

    assert asyncio.run(cancel(queued)) == "cancelled"
    assert worker_store.get(queued).status is JobStatus.CANCELLED
    assert not worker_store.claim(queued, "w1").claimed
    assert asyncio.run(cancel(running)) == "running" and worker_store.cancel_requested(running)
    assert worker_store.cancelled(running, 3) and worker_store.get(running).status is JobStatus.CANCELLED
    assert asyncio.run(cancel(uuid.uuid4().hex)) is None


def test_queue_positions_follow_submission_order(settings: Settings, worker_store: JobStore) -> None:
    first, second, third = (create(settings)[0] for _ in range(3))

    async def positions() -> list[int | None]:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = AsyncJobStore(client, client, settings.key_prefix, settings.result_ttl_s)
        try:
            return [await store.position(job_id) for job_id in (first, second, third)] + [await store.queue_length()]
        finally:
            await client.aclose()

    assert asyncio.run(positions()) == [1, 2, 3, 3]
    worker_store.worker_alive("w1")
    worker_store.claim(first, "w1")
    assert asyncio.run(positions()) == [None, 1, 2, 2]


def test_the_queue_cap_is_atomic_under_concurrent_submissions(settings: Settings) -> None:
    outcomes = create(settings, max_queue=32, count=50)
    accepted = [item for item in outcomes if isinstance(item, str)]
    refused = [item for item in outcomes if isinstance(item, QueueFull)]
    assert len(accepted) == 32 and len(refused) == 18
    client = redis.Redis.from_url(settings.redis_url)
    assert client.zcard(f"{settings.key_prefix}:queue") == 32


def test_a_queued_job_is_resent_only_when_the_broker_lost_its_message(
    settings: Settings, worker_store: JobStore
) -> None:
    """A backlog waiting in the broker is never re-sent; a job whose message is gone (a worker died
    as it took it) is re-sent once per window, whoever asks."""
    from contract.tasks import make_celery, send_generate

    settings = settings.model_copy(update={"queue_name": settings.key_prefix})  # a queue of its own
    worker_store = JobStore(settings)
    app = make_celery(settings)
    held, lost, waiting = create(settings, count=3)
    for job_id in (held, lost, waiting):  # each LPUSHed: the oldest is on the right
        send_generate(app, job_id, SPEC)
    client = worker_store.client
    queue = settings.queue_name
    taken = client.rpop(queue)  # held's message, as a worker's BRPOP takes it, recorded unacknowledged
    client.hset("unacked", "tag-1", f'[{taken}, "", "{queue}"]')
    client.rpop(queue)  # lost's message: taken by a worker that died before recording it
    assert worker_store.resend_lost() == []  # sent just now: no judging yet
    old = time.time() - settings.lost_message_after_s - 1
    for job_id in (held, lost, waiting):
        worker_store.client.hset(worker_store.keys.job(job_id), "sent_at", repr(old))
        worker_store.client.zadd(worker_store.keys.queue, {job_id: old})
    (resent,) = worker_store.resend_lost()
    assert resent.id == lost and resent.spec == SPEC  # the waiting and the held ones stay as they are
    assert worker_store.resend_lost() == []  # marked sent: once per window
    client.delete("unacked", queue)
    app.close()
    worker_store.client.close()
    worker_store.raw.close()
