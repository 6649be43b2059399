"""Failures: a job that raises ends ``failed`` with its message; a job whose worker is killed
mid-run is run again by a restarted worker, with the same result."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import redis

from contract.layout import Keys
from contract.settings import Settings
from contract.spec import JobSpec
from contract.tasks import make_celery, send_generate
from contract.transitions import Transitions
from serve.command import worker_command
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import (
    KEY_PREFIX,
    service_env,
    start_api,
    start_logged,
    stop_process,
    wait_for_worker,
    wait_job,
)


def test_a_job_that_raises_ends_failed_with_its_message(client: httpx.Client, model_dir: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(model_dir / "mnist.safetensors", framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    metadata["class_names"] = json.dumps([str(digit) for digit in range(9)])  # 9 names, 10 classes
    broken = model_dir / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)  # a sound header: only loading the model fails
    truncated = model_dir / "truncated.safetensors"
    truncated.write_bytes((model_dir / "mnist.safetensors").read_bytes()[:-64])
    try:
        refused = client.post("/generate", json={"model": "truncated", "n": 1})
        assert refused.status_code == 422 and "truncated.safetensors" in refused.json()["message"]
        job = client.post("/generate", json={"model": "broken", "n": 1, "sampler": "ddim", "steps": 10})
        assert job.status_code == 202, job.text
        record = wait_job(client, job.json()["id"])
        assert record["status"] == "failed"
        assert "class names" in record["error"] and "Traceback" not in record["error"]
        assert "broken.safetensors" in record["error"] and str(model_dir) not in record["error"]
        assert client.get(f"/jobs/{record['id']}/png").status_code == 409
        # the worker survives and takes the next job
        follow = client.post("/generate", json={"n": 1, "sampler": "ddim", "steps": 10}).json()
        assert wait_job(client, follow["id"])["status"] == "succeeded"
    finally:
        broken.unlink()
        truncated.unlink()


def test_a_spec_whose_weights_are_not_the_models_fails_with_a_clear_message(
    client: httpx.Client, redis_server: EmbeddedRedis
) -> None:
    model = client.get("/models").json()["models"][0]
    spec = JobSpec(
        model=model["name"], weights_sha256="0" * 64, sampler="ddim", steps=10, guidance=0.0, seed=1, digit=2, n=1
    )
    settings = Settings(redis_url=redis_server.url, key_prefix=KEY_PREFIX, queue_name=KEY_PREFIX)
    job_id = os.urandom(16).hex()
    Transitions(redis.Redis.from_url(redis_server.url), Keys(KEY_PREFIX)).create(
        job_id, spec, now=time.time(), ttl_s=600, max_queue=100
    )
    send_generate(make_celery(settings), job_id, spec)
    record = wait_job(client, job_id)
    assert record["status"] == "failed" and "changed since the job was queued" in record["error"]
    assert record["weights_sha256"] == "0" * 64  # the record still names what was asked for


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
