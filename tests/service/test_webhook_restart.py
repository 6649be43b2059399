"""A webhook delivery survives a restart of every process: under ``ddpm serve``, a receiver fails
the first attempt; ``ddpm serve`` is SIGKILLed (its Redis, worker and API go with it) while the
delivery waits for its retry; a new ``ddpm serve`` on the same data directory (new Redis, worker
and API processes) sends it, once, with the same id and body, signed so that the
``standardwebhooks`` package verifies it."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import time
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from tests.receivers import Receiver
from tests.service.conftest import wait_job
from tests.service.test_serve import DDIM, Serve, submit

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
ENV = {
    "DDPM_WEBHOOK_SECRET": SECRET,
    "DDPM_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "DDPM_WEBHOOK_BACKOFF_S": "8",  # the retry is due 4-8 s after the failure: after the kill
    "DDPM_WEBHOOK_POLL_S": "0.2",
    "DDPM_REDIS_APPENDFSYNC": "always",
}


def gone(pids: list[int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {alive} still alive")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def webhook_of(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/jobs/{job_id}", timeout=10).json()["webhook"]


def test_a_pending_delivery_is_sent_once_after_every_process_restarted(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Receiver(script=[500, 200]) as receiver:
        with Serve(model_dir, data, "serve-webhook.log", **ENV) as serve:
            serve.wait_ready()
            with httpx.Client(base_url=serve.base, timeout=30) as client:
                job_id = submit(client, {**DDIM, "webhook_url": receiver.url})
                assert wait_job(client, job_id)["status"] == "succeeded"
            receiver.wait_for(1)
            deadline = time.monotonic() + 10
            while (webhook := webhook_of(serve.base, job_id))["attempts"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert webhook["state"] == "pending" and webhook["last_status"] == 500
            assert webhook["next_attempt_at"] > time.time() + 1  # not due yet
            before = serve.children()
            os.killpg(serve.process.pid, signal.SIGKILL)  # ddpm serve and, by parent-death signals, its children
            serve.process.wait()
            gone(list(before.values()))
        assert len(receiver.deliveries) == 1
        with Serve(model_dir, data, "serve-webhook.log", **ENV) as again:
            again.wait_ready()
            assert set(again.children().values()).isdisjoint(before.values())  # every process is new
            first, second = receiver.wait_for(2, timeout=30)
            deadline = time.monotonic() + 10
            while (webhook := webhook_of(again.base, job_id))["state"] != "delivered" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert webhook["state"] == "delivered" and webhook["attempts"] == 2 and webhook["last_status"] == 200
            time.sleep(1.0)
            assert len(receiver.deliveries) == 2  # once after the restart, never again
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{job_id}"
    assert first.body == second.body
    payloads = [Webhook(SECRET).verify(delivery.body, delivery.headers) for delivery in (first, second)]
    assert payloads[1]["type"] == "job.succeeded" and payloads[1]["data"]["id"] == job_id
