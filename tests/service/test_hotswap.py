"""Model hot-swap against the real processes: a checkpoint added to the model directory is
offered without a restart; one replaced (write, then rename) serves the next job while a job in
flight finishes on the weights it started with; a half-written file is never offered."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx

from serve.command import stop_process, worker_command
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import make_tiny_checkpoint, service_env, start_api, start_logged, wait_for_worker, wait_job

PREFIX = "ddpmswap"


def publish(source: Path, target: Path) -> None:
    """The documented way to publish a checkpoint: write it beside, then rename it into place."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def test_models_are_added_and_replaced_without_a_restart(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    make_tiny_checkpoint(models / "mnist.safetensors")  # 200 training steps
    replacement = make_tiny_checkpoint(tmp_path / "replacement.safetensors", num_train_timesteps=100)
    env = service_env(redis_server.url, models, DDPM_KEY_PREFIX=PREFIX, DDPM_QUEUE_NAME=PREFIX)
    api, base = start_api(env, "api-swap.log")
    worker = start_logged(worker_command(queue=PREFIX), env, "worker-swap.log")
    try:
        wait_for_worker(redis_server.url, worker, PREFIX)
        with httpx.Client(base_url=base, timeout=30) as http:
            # a new file appears in /models at once
            publish(replacement, models / "second.safetensors")
            listed = {model["name"]: model for model in http.get("/models").json()["models"]}
            assert set(listed) == {"mnist", "second"} and listed["second"]["num_train_timesteps"] == 100
            added = http.post("/generate", json={"model": "second", "n": 1, "sampler": "ddim", "steps": 10})
            assert wait_job(http, added.json()["id"])["status"] == "succeeded"

            # a half-written file is never offered
            whole = (models / "second.safetensors").read_bytes()
            (models / "partial.safetensors").write_bytes(whole[: len(whole) // 2])
            assert "partial" not in {model["name"] for model in http.get("/models").json()["models"]}
            assert http.post("/generate", json={"model": "partial", "n": 1}).status_code == 422

            # replacing the default model: the running job keeps its weights, the next job gets the new ones
            old_hash = listed["mnist"]["weights_sha256"]
            running = http.post("/generate", json={"digit": 1, "n": 8, "sampler": "ddpm", "seed": 4}).json()["id"]
            while http.get(f"/jobs/{running}").json()["progress"]["step"] < 3:
                time.sleep(0.02)
            publish(replacement, models / "mnist.safetensors")
            after = http.post("/generate", json={"digit": 2, "n": 1, "sampler": "ddpm"}).json()["id"]
            first, second = wait_job(http, running), wait_job(http, after)
            assert first["status"] == second["status"] == "succeeded"
            assert first["weights_sha256"] == old_hash and first["progress"]["total"] == 200
            assert second["weights_sha256"] == listed["second"]["weights_sha256"] != old_hash
            assert second["progress"]["total"] == 100  # the new file's own schedule
    finally:
        stop_process(worker, "worker", grace=15)
        stop_process(api, "API")
