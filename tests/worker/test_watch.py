"""worker.progress.JobWatch: one thread publishes every job's progress and reads every job's
cancel flag in one Redis round trip per interval (a real Redis)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from contract.settings import Settings
from serve.redis_server import EmbeddedRedis
from worker.engine.request_state import HostStep
from worker.progress import JobChannel, JobReporter, JobWatch
from worker.store import JobBatch, JobStore


class Handle:
    def __init__(self) -> None:
        self.cancels = 0

    def cancel(self) -> bool:
        self.cancels += 1
        return True


@pytest.fixture
def store(redis_server: EmbeddedRedis, request: pytest.FixtureRequest) -> JobStore:
    settings = Settings(redis_url=redis_server.url, key_prefix=f"watch{abs(hash(request.node.name)) % 10**6}")
    return JobStore(settings)


def watched_job(store: JobStore, watch: JobWatch, job_id: str, total: int = 10) -> tuple[JobChannel, Handle]:
    settings = Settings(progress_interval_s=0.0, preview_count=0)
    channel = JobChannel(total, False, settings)
    handle = Handle()
    store.client.hset(store.keys.job(job_id), mapping={"status": "running"})
    watch.watch(job_id, handle.cancel, JobReporter(job_id, channel, settings))
    return channel, handle


def progress_steps(store: JobStore, job_id: str) -> list[int]:
    entries = store.client.xrange(store.keys.events(job_id))
    return [json.loads(fields["data"])["step"] for _, fields in entries if fields["event"] == "progress"]


def step(channel: JobChannel, number: int) -> None:
    channel.on_output(HostStep(number, channel.total, 1000 - number))


def test_one_round_trip_serves_every_job_and_cancels_only_the_flagged_one(store, monkeypatch) -> None:
    watch = JobWatch(store, interval=3600)  # rounds run by hand below
    jobs = {job_id: watched_job(store, watch, job_id) for job_id in ("a", "b", "c")}
    round_trips = []
    execute = JobBatch.execute
    monkeypatch.setattr(JobBatch, "execute", lambda batch: round_trips.append(len(batch)) or execute(batch))
    for number in (1, 2):
        for channel, _ in jobs.values():
            step(channel, number)
    store.client.hset(store.keys.job("b"), "cancel", "1")
    watch.round()
    assert len(round_trips) == 1  # three jobs' progress and three cancel reads: one pipeline
    assert [handle.cancels for _, handle in jobs.values()] == [0, 1, 0]
    assert {job_id: progress_steps(store, job_id) for job_id in jobs} == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}
    step(jobs["a"][0], 3)
    watch.finish("a")  # what is left goes out at once, on the caller's thread
    assert progress_steps(store, "a") == [1, 2, 3]
    watch.round()
    assert round_trips == [3 * (2 * 2 + 1), 2, 2]  # commands per round trip; then b and c's cancel reads


def test_the_thread_runs_rounds_and_a_redis_outage_drops_progress_not_jobs(store, redis_server) -> None:
    watch = JobWatch(store, interval=0.02)
    channel, handle = watched_job(store, watch, "x")
    step(channel, 1)
    deadline = time.monotonic() + 10
    while progress_steps(store, "x") != [1] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert progress_steps(store, "x") == [1]
    broken = JobStore(Settings(redis_url="redis://127.0.0.1:1/0", key_prefix=store.keys.prefix))
    broken.client.connection_pool.connection_kwargs.update(socket_connect_timeout=0.1)
    watch.store = broken  # Redis gone: rounds fail, the thread lives on, nothing is cancelled
    step(channel, 2)
    time.sleep(0.3)
    assert handle.cancels == 0 and watch._thread is not None and watch._thread.is_alive()
    watch.store = store
    store.client.hset(store.keys.job("x"), "cancel", "1")
    deadline = time.monotonic() + 10
    while handle.cancels == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.cancels >= 1
    watch.close()


def test_a_redraw_keeps_the_jobs_reporter_and_takes_the_new_handle(store) -> None:
    watch = JobWatch(store, interval=3600)
    channel, first = watched_job(store, watch, "r")
    redraw = Handle()
    watch.watch("r", redraw.cancel)  # a redraw: its own handle, the job's reporter
    step(channel, 1)
    store.client.hset(store.keys.job("r"), "cancel", "1")
    watch.round()
    assert (first.cancels, redraw.cancels) == (0, 1) and progress_steps(store, "r") == [1]


def test_a_preview_is_an_event_with_a_png(store) -> None:
    watch = JobWatch(store, interval=3600)
    settings = Settings(progress_interval_s=0.0, preview_count=2)
    channel = JobChannel(4, False, settings)
    watch.watch("p", Handle().cancel, JobReporter("p", channel, settings))
    image = np.zeros((1, 8, 8, 1), np.uint8)
    channel.on_output(HostStep(2, 4, 500, sample=image, pred_original_sample=image))
    watch.round()
    events = [fields for _, fields in store.client.xrange(store.keys.events("p"))]
    previews = [json.loads(fields["data"]) for fields in events if fields["event"] == "preview"]
    assert len(previews) == 1 and previews[0]["image"].startswith("data:image/png;base64,")
