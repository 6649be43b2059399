"""``ddpm serve``: one command brings up Redis, a worker and the API; Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serve.redis_server import free_port
from tests.service.conftest import ARTIFACTS, REPO, wait_job


def test_ddpm_serve_runs_the_stack_and_stops_on_ctrl_c(model_dir: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_") and key != "REDIS_URL"}
    env.update(DDPM_TORCH_THREADS="1", DDPM_GIF_FRAMES="6", PYTHONUNBUFFERED="1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ddpm_core", "serve", "--port", str(port), "--model-dir", str(model_dir)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "ddpm serve did not become ready"
                time.sleep(0.3)
            with httpx.Client(base_url=base, timeout=30) as client:
                assert "<form" in client.get("/").text
                job = client.post("/generate", json={"digit": 3, "n": 2, "sampler": "ddim", "steps": 10})
                assert job.status_code == 202
                assert wait_job(client, job.json()["id"])["status"] == "succeeded"
                gif = client.get(job.json()["links"]["gif"])
                assert gif.headers["content-type"] == "image/gif" and gif.content[:6] == b"GIF89a"
            redis_port = _embedded_redis_port(log_path.read_text())
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the foreground process group
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "stopped" in text
    for closed in (port, redis_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", closed)) != 0, f"port {closed} still open after Ctrl-C"


def _embedded_redis_port(log: str) -> int:
    marker = "on port "
    line = next(line for line in log.splitlines() if "embedded Redis" in line)
    return int(line.split(marker)[1].split()[0])
