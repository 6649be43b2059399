"""Faults injected into a running ``ddpm serve``, as an operator (or the OOM killer) would: the
worker's process group, the embedded Redis or the API is SIGKILLed. ``ddpm serve`` restarts what died,
keeps the API up, and no job is lost: a job running or queued at the kill ends ``succeeded``,
and finished results are still served."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.service.conftest import wait_job
from tests.service.test_serve import DDIM, Serve, pause_worker, submit


def wait_worker_restart(serve: Serve, old: int, timeout: float = 30) -> float:
    """Wait until a new worker process has reported ready (the log says so); the seconds it took."""
    start = time.monotonic()
    while True:
        pid = serve.children().get("worker")
        if pid not in (None, old) and f":{pid} ready" in serve.log():
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"no new worker in {timeout} s:\n{serve.log()[-3000:]}"
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_its_jobs_are_not_lost(model_dir: Path, tmp_path: Path) -> None:
    with Serve(model_dir, tmp_path / "data", "serve-worker-kill.log") as serve:
        serve.wait_ready()
        before = serve.children()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            running = submit(client, {"digit": 5, "n": 4, "sampler": "ddpm", "seed": 7})  # all 200 steps
            deadline = time.monotonic() + 60
            while int(client.get(f"/jobs/{running}").json()["progress"]["step"]) < 5:
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
            os.killpg(before["worker"], signal.SIGKILL)  # the worker and its pool process, mid-job
            killed_at = time.monotonic()
            queued = submit(client, DDIM)  # no worker right now: it waits in the queue
            back = wait_worker_restart(serve, before["worker"])
            after = serve.children()
            assert after["worker"] != before["worker"]
            assert after["API"] == before["API"] and after["redis"] == before["redis"]  # only the dead one restarts
            record = wait_job(client, running, timeout=90)
            assert record["status"] == "succeeded" and record["attempts"] == 2, record
            assert wait_job(client, queued)["status"] == "succeeded"
            for job in (running, queued):
                assert client.get(f"/jobs/{job}/png").content[:8] == b"\x89PNG\r\n\x1a\n"
            recovered = time.monotonic() - killed_at
        assert serve.stop() == 0
        text = serve.log()
    assert "the worker exited with signal SIGKILL" in text and "restarted the worker" in text
    print(f"worker back (ready) {back:.1f} s after the kill; both jobs done {recovered:.1f} s after it")


def get_after_redis_restart(client: httpx.Client, path: str) -> httpx.Response:
    """GET ``path`` right after a Redis restart: the API's Redis clients retry on a fresh
    connection, so not even the first answer is a 503."""
    response = client.get(path)
    assert response.status_code == 200, response.text
    return response


def test_a_killed_redis_is_restarted_with_its_queue_and_results(model_dir: Path, tmp_path: Path) -> None:
    # every write on disk before Redis answers: nothing is lost to the kill (no sleep for the fsync)
    with Serve(model_dir, tmp_path / "data", "serve-redis-kill.log", DDPM_REDIS_APPENDFSYNC="always") as serve:
        serve.wait_ready()
        store = serve.redis_client()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            done = submit(client, DDIM)
            assert wait_job(client, done)["status"] == "succeeded"
            png = client.get(f"/jobs/{done}/png").content
            worker = pause_worker(serve)
            queued = submit(client, {**DDIM, "digit": 8})
            assert store.llen("ddpm") == 1  # the task message waits in Redis, not in a worker
            before = serve.children()
            os.kill(before["redis"], signal.SIGKILL)
            killed_at = time.monotonic()
            unready = client.get("/readyz")  # Redis is down or just back, and the worker is paused
            assert unready.status_code == 503 and unready.json()["status"] == "unavailable"
            while True:  # Redis comes back without a human
                try:
                    if store.ping():
                        break
                except Exception:
                    pass
                assert time.monotonic() - killed_at < 30, serve.log()[-3000:]
                time.sleep(0.05)
            redis_back = time.monotonic() - killed_at
            assert serve.children()["redis"] != before["redis"]
            # the AOF kept the queue, the job records and the results
            assert store.llen("ddpm") == 1
            assert get_after_redis_restart(client, f"/jobs/{queued}").json()["status"] == "queued"
            assert get_after_redis_restart(client, f"/jobs/{done}").json()["status"] == "succeeded"
            assert get_after_redis_restart(client, f"/jobs/{done}/png").content == png
            os.killpg(worker, signal.SIGCONT)
            ready = serve.wait_ready(timeout=60)
            assert wait_job(client, queued)["status"] == "succeeded"
            assert serve.children()["API"] == before["API"]
            # the API, killed, comes back too
            os.killpg(before["API"], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while serve.children().get("API") in (None, before["API"]):
                assert time.monotonic() < deadline, serve.log()[-3000:]
                time.sleep(0.1)
            serve.wait_ready(timeout=30)
            assert client.get(f"/jobs/{queued}/png").status_code == 200
        store.close()
        assert serve.stop() == 0
        text = serve.log()
    assert "the Redis server exited with signal SIGKILL" in text and "restarted the Redis server" in text
    assert "the API exited with signal SIGKILL" in text and "restarted the API" in text
    print(f"Redis back {redis_back:.2f} s after the kill; /readyz 200 again {ready:.1f} s after the worker resumed")
