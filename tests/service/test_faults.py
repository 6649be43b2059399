"""Fault injection against the real processes: oversized bodies, simultaneous submissions against
the queue cap, Redis stopped under running and queued jobs. Each asserts that nothing was lost and
that no answer was a 5xx; the counts feed the README's reliability section. The malformed bodies,
bad event ids and paths and the crafted checkpoint are answered by the API alone: they run
in-process in tests/api/test_validation.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from serve.command import stop_process, worker_command
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import service_env, start_api, start_logged, wait_for_worker, wait_job


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def declared_too_large(base_url: str) -> int:
    """Declare a 256 MB body, send 2 bytes of it; the status line the server answers with."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {1 << 28}\r\n\r\n{{}}".encode()
        )
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_oversized_bodies_are_refused_unread_and_memory_stays_flat(base_url: str, api) -> None:
    pid = api[0].pid
    before = rss_kib(pid)

    def body() -> Iterator[bytes]:  # 256 MB, chunked: no Content-Length to refuse it by
        block = b"x" * (1 << 20)
        for _ in range(256):
            yield block

    with httpx.Client(base_url=base_url, timeout=60) as http:
        try:
            answer = http.post("/generate", content=body(), headers={"content-type": "application/json"})
            assert answer.status_code == 413
        except httpx.RemoteProtocolError:
            pass  # the server answered 413 and closed while we were still sending: also a refusal
        assert declared_too_large(base_url) == 413  # refused on its Content-Length alone
        assert http.get("/healthz").status_code == 200
    grown_mib = (rss_kib(pid) - before) / 1024
    assert grown_mib < 32, f"the API grew by {grown_mib:.0f} MiB reading a body it should refuse"


def test_simultaneous_posts_against_the_queue_cap_accept_exactly_the_cap(
    redis_server: EmbeddedRedis, model_dir: Path
) -> None:
    # no worker reads this queue: every accepted job stays queued
    env = service_env(
        redis_server.url, model_dir, DDPM_KEY_PREFIX="ddpmcap", DDPM_QUEUE_NAME="ddpmcap", DDPM_MAX_QUEUE="32"
    )
    process, base = start_api(env, "api-cap.log")
    statuses: list[int] = []
    lock = threading.Lock()
    gate = threading.Barrier(50)

    def post() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            gate.wait()
            status = http.post("/generate", json={"n": 1, "sampler": "ddim", "steps": 10}).status_code
            with lock:
                statuses.append(status)

    try:
        threads = [threading.Thread(target=post) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        assert sorted(statuses) == [202] * 32 + [429] * 18
        assert httpx.get(f"{base}/readyz", timeout=10).json()["queued"] is None  # no worker: not ready
    finally:
        stop_process(process, "API")


def test_redis_stopped_and_restarted_with_running_and_queued_jobs_loses_nothing(
    model_dir: Path, tmp_path: Path
) -> None:
    """Redis goes away for a few seconds while one job runs and two wait (the worker holds one
    at a time here); it comes back from its append-only file. Every job completes exactly once,
    and a result stored before the outage is still there."""

    server = EmbeddedRedis(data_dir=tmp_path / "redis", appendfsync="always").start()
    env = service_env(
        server.url, model_dir, DDPM_KEY_PREFIX="ddpmout", DDPM_QUEUE_NAME="ddpmout", DDPM_JOBS_IN_FLIGHT="1"
    )
    api, base = start_api(env, "api-outage.log")
    worker = start_logged(worker_command(queue="ddpmout"), env, "worker-outage.log")
    try:
        wait_for_worker(server.url, worker, "ddpmout")
        with httpx.Client(base_url=base, timeout=30) as http:
            before = http.post("/generate", json={"digit": 1, "n": 1, "sampler": "ddim", "steps": 10}).json()["id"]
            assert wait_job(http, before)["status"] == "succeeded"
            png = http.get(f"/jobs/{before}/png").content
            running = http.post("/generate", json={"digit": 2, "n": 8, "sampler": "ddpm", "seed": 1}).json()["id"]
            queued = [
                http.post("/generate", json={"digit": d, "n": 2, "sampler": "ddim", "steps": 20}).json()["id"]
                for d in (3, 4)
            ]
            while http.get(f"/jobs/{running}").json()["progress"]["step"] < 5:
                time.sleep(0.05)
            server.stop()
            time.sleep(4)  # the worker goes on generating; its writes wait for Redis
            server.start()
            for job in (running, *queued):
                record = wait_job(http, job, timeout=120)
                assert record["status"] == "succeeded", record
                assert record["attempts"] == 1, record  # not run again: its worker never died
            assert http.get(f"/jobs/{before}/png").content == png
    finally:
        stop_process(worker, "worker", grace=15)
        stop_process(api, "API")
        server.close()
