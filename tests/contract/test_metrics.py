"""The metrics kept in Redis by the transition scripts and the worker's reports, in-process
against a real Redis: each transition counts once, refused ones not at all, even when racing;
durations land in the right buckets; histograms read back cumulative and consistent."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from api.store import AsyncJobStore, QueueFull
from contract.metrics import (
    JOB_SECONDS_BUCKETS,
    MODEL_LOAD_BUCKETS,
    OBSERVE_LUA,
    MetricKeys,
    bucket_of,
    observation,
    read_histogram,
)
from contract.settings import Settings
from serve.redis_server import EmbeddedRedis
from tests.contract.test_transitions import create
from worker.store import JobStore, ModelLoads


@pytest.fixture()
def settings(redis_server: EmbeddedRedis) -> Settings:
    return Settings(redis_url=redis_server.url, key_prefix=f"m{uuid.uuid4().hex[:8]}", worker_dead_after_s=5)


def counters(store: JobStore) -> dict[str, int]:
    return {name: int(value) for name, value in store.client.hgetall(MetricKeys(store.keys.prefix).jobs).items()}


def histogram(store: JobStore, key: str, label: str = "", bounds=JOB_SECONDS_BUCKETS):
    return read_histogram(store.client.hgetall(key), bounds, label)


def test_bounds_and_the_lua_buckets_agree() -> None:
    assert list(JOB_SECONDS_BUCKETS) == sorted(JOB_SECONDS_BUCKETS) and 0.5 in JOB_SECONDS_BUCKETS
    assert "local BOUNDS = {0.5, 1.0, 2.0, 5.0" in OBSERVE_LUA and "'1800'" in OBSERVE_LUA
    assert bucket_of(0.5, JOB_SECONDS_BUCKETS) == 0.5 and bucket_of(0.51, JOB_SECONDS_BUCKETS) == 1
    assert bucket_of(1801, JOB_SECONDS_BUCKETS) is None
    assert observation(-1.0, MODEL_LOAD_BUCKETS) == {"count": 1, "sum": 0.0, "bucket:0.1": 1}


def test_each_transition_counts_once_and_a_refused_one_not_at_all(settings: Settings, worker_store: JobStore) -> None:
    m = MetricKeys(settings.key_prefix)
    done, cancelled, failed, flagged = create(settings, count=4)
    assert counters(worker_store) == {"submitted": 4}
    (refused,) = create(settings, max_queue=4)
    assert isinstance(refused, QueueFull) and counters(worker_store) == {"submitted": 4}

    worker_store.worker_alive("w1")
    assert worker_store.claim(done, "w1").claimed
    # pretend it was submitted 7 s ago and started 3 s ago: 7 s to finish, 4 s in the queue
    now = time.time()
    worker_store.client.hset(
        worker_store.keys.job(done), mapping={"created_at": repr(now - 7), "started_at": repr(now - 3)}
    )
    assert worker_store.succeed(done, b"png", b"gif", 3.0)
    assert not worker_store.succeed(done, b"png", b"gif", 3.0) and not worker_store.fail(done, "late")
    assert counters(worker_store) == {"submitted": 4, "succeeded": 1}
    took = histogram(worker_store, m.job_seconds, "succeeded:")
    assert took.count == 1 and 6.9 < took.sum < 7.5 and dict(took.buckets)[5] == 0 and dict(took.buckets)[10] == 1
    waited = histogram(worker_store, m.queue_wait_seconds)
    assert waited.count == 1 and 3.9 < waited.sum < 4.5 and dict(waited.buckets)[2] == 0
    assert dict(waited.buckets)[5] == 1

    # a queued job cancelled by the API: counted by the cancel script, its whole life a wait
    async def cancel(job_id: str) -> str | None:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            return await AsyncJobStore(client, client, settings.key_prefix, settings.result_ttl_s).cancel(job_id)
        finally:
            await client.aclose()

    assert asyncio.run(cancel(cancelled)) == "cancelled" and asyncio.run(cancel(cancelled)) == "cancelled"
    assert counters(worker_store)["cancelled"] == 1
    assert histogram(worker_store, m.job_seconds, "cancelled:").count == 1

    # a running job asked to cancel counts only when its worker ends it
    assert worker_store.claim(flagged, "w1").claimed
    assert asyncio.run(cancel(flagged)) == "running" and counters(worker_store)["cancelled"] == 1
    assert worker_store.cancelled(flagged, 2) and counters(worker_store)["cancelled"] == 2

    # a requeue counts; the job's end counts once however many threads race to record it
    assert worker_store.claim(failed, "w1").claimed
    worker_store.client.zadd(worker_store.keys.workers, {"w1": time.time() - 60})
    assert [record.id for record in worker_store.requeue_abandoned()] == [failed]
    assert worker_store.requeue_abandoned() == [] and counters(worker_store)["requeued"] == 1
    outcomes: list[bool] = []
    threads = [threading.Thread(target=lambda: outcomes.append(worker_store.fail(failed, "boom"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 1
    assert counters(worker_store) == {"submitted": 4, "succeeded": 1, "cancelled": 2, "requeued": 1, "failed": 1}

    # every finished job is in both histograms once; buckets are cumulative and end at the count
    statuses = {status: histogram(worker_store, m.job_seconds, f"{status}:") for status in ("succeeded", "failed")}
    statuses["cancelled"] = histogram(worker_store, m.job_seconds, "cancelled:")
    assert {status: h.count for status, h in statuses.items()} == {"succeeded": 1, "failed": 1, "cancelled": 2}
    waited = histogram(worker_store, m.queue_wait_seconds)
    assert waited.count == 4
    for h in [*statuses.values(), waited]:
        values = [count for _, count in h.buckets]
        assert values == sorted(values) and h.buckets[-1] == (math.inf, h.count)


def test_a_worker_report_carries_its_step_rate_and_model_loads(settings: Settings, worker_store: JobStore) -> None:
    loads = ModelLoads()
    loads.add("mnist", 0.3)
    loads.add("mnist", 12.0)
    worker_store.worker_stats("w1", {"job_steps": "100", "rows": "400"}, loads=loads)
    stats = worker_store.client.hgetall(worker_store.keys.worker_stats("w1"))
    assert stats["job_steps"] == "100" and float(stats["steps_per_second"]) == 0.0  # no previous report
    assert float(stats["model_load_seconds:mnist"]) == 12.0  # the latest load
    m = MetricKeys(settings.key_prefix)
    assert worker_store.client.smembers(m.models) == {"mnist"}
    loaded = read_histogram(worker_store.client.hgetall(m.model_load("mnist")), MODEL_LOAD_BUCKETS)
    assert loaded.count == 2 and loaded.sum == pytest.approx(12.3)
    assert dict(loaded.buckets)[0.5] == 1 and dict(loaded.buckets)[10] == 1 and dict(loaded.buckets)[30] == 2
    assert loads.take() == []  # written once

    time.sleep(0.2)
    worker_store.worker_stats("w1", {"job_steps": "150", "rows": "600"}, loads=loads)
    rate = float(worker_store.client.hget(worker_store.keys.worker_stats("w1"), "steps_per_second"))
    assert 50 / 1.0 < rate < 50 / 0.19  # 50 steps over the ~0.2 s since the previous report


def test_model_loads_wait_for_redis_to_come_back(settings: Settings) -> None:
    loads = ModelLoads()
    loads.add("mnist", 1.5)
    down = JobStore(settings, client=redis.Redis.from_url("redis://127.0.0.1:9/0", decode_responses=True))
    with pytest.raises(redis.exceptions.ConnectionError):
        down.worker_stats("w1", {"job_steps": "0"}, loads=loads)
    assert loads.take() == [("mnist", 1.5)]  # kept for the next report
