"""Failures: a job that raises ends ``failed`` with its message; a job whose worker is killed
mid-run is run again by a restarted worker, with the same result."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image

from contract.layout import Keys
from contract.settings import Settings
from contract.spec import JobSpec
from contract.tasks import make_celery, send_generate
from contract.transitions import Transitions
from serve.command import worker_command
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import (
    KEY_PREFIX,
    own_stack,
    service_env,
    start_api,
    start_logged,
    stop_process,
    wait_for_worker,
    wait_job,
)


def test_a_job_that_raises_ends_failed_with_its_message(redis_server: EmbeddedRedis, own_model_dir: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(own_model_dir / "mnist.safetensors", framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    metadata["class_names"] = json.dumps([str(digit) for digit in range(9)])  # 9 names, 10 classes
    broken = own_model_dir / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)  # a sound header: only loading the model fails
    truncated = own_model_dir / "truncated.safetensors"
    truncated.write_bytes((own_model_dir / "mnist.safetensors").read_bytes()[:-64])
    with (
        own_stack(redis_server.url, own_model_dir, "ddpmraise", "raise") as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        refused = client.post("/generate", json={"model": "truncated", "n": 1})
        assert refused.status_code == 422 and "truncated.safetensors" in refused.json()["message"]
        job = client.post("/generate", json={"model": "broken", "n": 1, "sampler": "ddim", "steps": 10})
        assert job.status_code == 202, job.text
        record = wait_job(client, job.json()["id"])
        assert record["status"] == "failed"
        assert "class names" in record["error"] and "Traceback" not in record["error"]
        assert "broken.safetensors" in record["error"] and str(own_model_dir) not in record["error"]
        assert client.get(f"/jobs/{record['id']}/png").status_code == 409
        # the worker survives and takes the next job
        follow = client.post("/generate", json={"n": 1, "sampler": "ddim", "steps": 10}).json()
        assert wait_job(client, follow["id"])["status"] == "succeeded"


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


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def test_jobs_survive_a_worker_killed_mid_batch_three_times_in_a_row(
    redis_server: EmbeddedRedis, model_dir: Path
) -> None:
    """Each round: three jobs share the worker's batches; the worker is SIGKILLed mid-job and a
    new one started. Every job ends succeeded after exactly two runs, with the result a run
    alone gives it; a dead worker's jobs run again within seconds (its liveness, not the stale
    window, decides)."""
    prefix = "ddpmkill"
    env = service_env(
        redis_server.url, model_dir, DDPM_KEY_PREFIX=prefix, DDPM_QUEUE_NAME=prefix, DDPM_WORKER_DEAD_AFTER_S="3"
    )
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    api, base = start_api(env, "api-kill.log")
    worker = start_logged(worker_command(queue=prefix), env, "worker-kill.log")
    recoveries = []
    try:
        wait_for_worker(redis_server.url, worker, prefix)
        with httpx.Client(base_url=base, timeout=30) as http:
            for round_ in range(3):
                bodies = [
                    {"digit": 4, "n": 4, "sampler": "ddpm", "seed": 11 + round_},
                    {"digit": 7, "n": 2, "sampler": "ddim", "steps": 150, "guidance": 1.0, "seed": 3 + round_},
                    {"n": 1, "sampler": "ddpm", "guidance": 0.5, "seed": 5 + round_},
                ]
                jobs = [http.post("/generate", json=body).json()["id"] for body in bodies]
                deadline = time.monotonic() + 60
                while min(int(http.get(f"/jobs/{job}").json()["progress"]["step"]) for job in jobs) < 5:
                    assert time.monotonic() < deadline, "the jobs did not start together"
                    time.sleep(0.02)
                os.killpg(worker.pid, signal.SIGKILL)  # mid-batch: every job in flight dies with it
                worker.wait()
                killed_at = time.monotonic()
                assert all(http.get(f"/jobs/{job}").json()["status"] == "running" for job in jobs)
                worker = start_logged(worker_command(queue=prefix), env, "worker-kill.log")
                while any(http.get(f"/jobs/{job}").json()["attempts"] < 2 for job in jobs):
                    assert time.monotonic() - killed_at < 60, "the jobs were not run again"
                    time.sleep(0.05)
                recoveries.append(time.monotonic() - killed_at)
                for job, body in zip(jobs, bodies, strict=True):
                    record = wait_job(http, job, timeout=120)
                    assert record["status"] == "succeeded" and record["attempts"] == 2, record
                    events = [fields["event"] for _, fields in store.xrange(f"{prefix}:events:{job}")]
                    assert events.count("running") == 2 and events.count("succeeded") == 1
                    alone = http.post("/generate", json=body).json()["id"]
                    assert wait_job(http, alone)["status"] == "succeeded"
                    first, again = (pixels(http.get(f"/jobs/{j}/png").content) for j in (job, alone))
                    assert np.abs(first - again).mean() < 1.0  # float-level noise at most
        # worker start (torch import, model load) included: 3 s to declare it dead, then a claim
        assert max(recoveries) < 20, recoveries
        print("kill -> every job running again (s):", [round(seconds, 1) for seconds in recoveries])
    finally:
        stop_process(worker, "worker", grace=15)
        stop_process(api, "API")
