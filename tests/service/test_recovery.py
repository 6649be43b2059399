"""Failures: a job that raises ends ``failed`` with its message; a job whose worker is killed
mid-run is run again by a restarted worker, with the same result."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import redis

from serve.command import worker_command
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import (
    service_env,
    start_api,
    start_logged,
    stop_process,
    wait_for_worker,
    wait_job,
)


def test_a_job_that_raises_ends_failed_with_its_message(client: httpx.Client, model_dir: Path) -> None:
    good = (model_dir / "mnist.safetensors").read_bytes()
    broken = model_dir / "broken.safetensors"
    broken.write_bytes(good[:-64])  # a readable header, truncated weights: loading raises
    try:
        job = client.post("/generate", json={"model": "broken", "n": 1, "sampler": "ddim", "steps": 10})
        assert job.status_code == 202, job.text
        record = wait_job(client, job.json()["id"])
        assert record["status"] == "failed"
        assert "broken.safetensors" in record["error"] and "Traceback" not in record["error"]
        assert client.get(f"/jobs/{record['id']}/png").status_code == 409
        # the worker survives and takes the next job
        follow = client.post("/generate", json={"n": 1, "sampler": "ddim", "steps": 10}).json()
        assert wait_job(client, follow["id"])["status"] == "succeeded"
    finally:
        broken.unlink()


def test_a_killed_workers_job_is_run_again_with_the_same_result(redis_server: EmbeddedRedis, model_dir: Path) -> None:
    prefix = "ddpmkill"
    env = service_env(redis_server.url, model_dir, DDPM_KEY_PREFIX=prefix, DDPM_QUEUE_NAME=prefix)
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    api, base = start_api(env, "api-kill.log")
    first = start_logged(worker_command(queue=prefix), env, "worker-kill.log")
    second = None
    try:
        name = wait_for_worker(redis_server.url, first, prefix)
        with httpx.Client(base_url=base, timeout=30) as http:
            body = {"digit": 4, "n": 4, "sampler": "ddpm", "seed": 11}
            job_id = http.post("/generate", json=body).json()["id"]
            deadline = time.monotonic() + 60
            while int(http.get(f"/jobs/{job_id}").json()["progress"]["step"]) < 5:
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
            os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, mid-job
            first.wait()
            assert http.get(f"/jobs/{job_id}").json()["status"] == "running"
            store.zrem(f"{prefix}:workers", name)
            second = start_logged(worker_command(queue=prefix), env, "worker-kill.log")
            record = wait_job(http, job_id, timeout=120)
            assert record["status"] == "succeeded", record
            assert record["attempts"] == 2
            events = [fields["event"] for _, fields in store.xrange(f"{prefix}:events:{job_id}")]
            assert events.count("running") == 2 and events.count("succeeded") == 1
            rerun = http.post("/generate", json=body).json()["id"]
            assert wait_job(http, rerun)["status"] == "succeeded"
            assert http.get(f"/jobs/{job_id}/png").content == http.get(f"/jobs/{rerun}/png").content
    finally:
        for process in (first, second):
            if process is not None:
                stop_process(process, "worker", grace=15)
        stop_process(api, "API")
