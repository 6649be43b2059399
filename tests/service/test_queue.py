"""The broker queue (``DDPM_QUEUE_NAME``): ``ddpm serve``'s worker consumes the queue its API
sends to, and ``/readyz`` is not ready while no live worker consumes that queue (it names it).
Run as root, ``ddpm serve`` says so in one line, without Celery's nine-line warning."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from serve.command import stop_process, worker_command
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import service_env, start_api, start_logged, wait_for_worker, wait_job
from tests.service.test_serve import DDIM, Serve, submit


def test_ddpm_serve_with_a_queue_name_runs_jobs(model_dir: Path, tmp_path: Path) -> None:
    with Serve(model_dir, tmp_path / "data", "serve-queue.log", DDPM_QUEUE_NAME="custom-queue") as serve:
        serve.wait_ready()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            assert client.get("/readyz").json()["queue"] == "custom-queue"
            job_id = submit(client, DDIM)
            assert wait_job(client, job_id, timeout=90)["status"] == "succeeded"
        assert serve.stop() == 0
    log = serve.log()
    assert "superuser privileges" not in log and "--uid option" not in log  # Celery's nine-line warning
    if os.geteuid() == 0:  # as root: one line says what it means, once
        assert log.count("the worker runs as root") == 1, log[-3000:]


def test_readyz_is_not_ready_while_no_worker_consumes_the_apis_queue(
    redis_server: EmbeddedRedis, model_dir: Path
) -> None:
    prefix = "ddpmqueue"
    env = service_env(redis_server.url, model_dir, DDPM_KEY_PREFIX=prefix, DDPM_QUEUE_NAME="sent-here")
    worker = start_logged(worker_command(queue="consumed-there"), env, "worker-queue.log")
    try:
        api, base = start_api(env, "api-queue.log")
        try:
            wait_for_worker(redis_server.url, worker, prefix)
            time.sleep(1)  # a heartbeat with its stats
            answer = httpx.get(f"{base}/readyz", timeout=10)
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["status"] == "unavailable" and body["queue"] == "sent-here"
            assert "'sent-here'" in body["reason"] and "consumed-there" in body["reason"]
        finally:
            stop_process(api, "API")
    finally:
        stop_process(worker, "worker", grace=15)
