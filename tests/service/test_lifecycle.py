"""The worker's life cycle under ``ddpm serve``, with faults injected into real processes: a
Redis SIGKILLed under running and queued jobs (the worker process rides it out), ``ddpm serve``
SIGKILLed (nothing it started outlives it), an idle stack stopped by SIGINT (within seconds),
a SIGKILLed worker whose running job runs again within seconds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.service.conftest import wait_job
from tests.service.test_serve import Serve, submit

DDPM_JOB = {"digit": 2, "n": 2, "sampler": "ddpm", "seed": 1}  # all 200 steps of the tiny model


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_worker_rides_out_a_redis_kill_and_every_job_ends_once(model_dir: Path, tmp_path: Path) -> None:
    with Serve(model_dir, tmp_path / "data", "lifecycle-redis-kill.log", DDPM_REDIS_APPENDFSYNC="always") as serve:
        serve.wait_ready()
        before = serve.children()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            jobs = [submit(client, {**DDPM_JOB, "seed": seed}) for seed in range(7)]
            deadline = time.monotonic() + 60
            while int(client.get(f"/jobs/{jobs[0]}").json()["progress"]["step"]) < 5:
                assert time.monotonic() < deadline, "no job started"
                time.sleep(0.05)
            os.kill(before["redis"], signal.SIGKILL)
            records = [wait_job(client, job, timeout=180) for job in jobs]
            # the worker's late writes and any duplicate message have had time to land
            time.sleep(3)
            again = [client.get(f"/jobs/{job}").json() for job in jobs]
            statuses = {response.status_code for response in (client.get("/readyz"), client.get("/models"))}
        after = serve.children()
        assert serve.stop() == 0
        text = serve.log()
    assert [record["status"] for record in records] == ["succeeded"] * 7, records
    assert [record["attempts"] for record in again] == [record["attempts"] for record in records]
    assert all(record["status"] == "succeeded" for record in again)
    assert after["worker"] == before["worker"], "the worker exited:\n" + text[-4000:]
    assert "the worker exited" not in text
    assert statuses == {200}
