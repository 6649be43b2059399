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
import pytest

from serve.command import worker_command
from tests.service.conftest import ARTIFACTS, KEY_PREFIX, service_env, start_logged, wait_job
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


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if alive(pid)}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for_build(serve: Serve, timeout: float = 60) -> set[int]:
    """Wait until the worker compiles a bucket in a child process; ``ddpm serve``'s descendants then."""
    deadline = time.monotonic() + timeout
    while True:
        below = descendants(serve.process.pid)
        if any("ddpm_core.aot" in cmdline(pid) for pid in below):
            return below
        assert time.monotonic() < deadline, "no bucket build started:\n" + serve.log()[-3000:]
        time.sleep(0.1)


def readiness(serve: Serve) -> dict:
    response = httpx.get(f"{serve.base}/readyz", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_cold_start_is_ready_at_once_compiles_behind_and_a_second_start_is_warm(
    model_dir: Path, tmp_path: Path
) -> None:
    """Fresh data directory and compile cache: ready in seconds while the buckets compile in the
    background; the next start of the same data directory serves the compiled buckets at once."""
    data = tmp_path / "data"
    compiling = {"DDPM_COMPILE": "1", "DDPM_MAX_BATCH": "2"}  # buckets 1 and 2
    with Serve(model_dir, data, "lifecycle-cold-start.log", **compiling) as serve:
        cold = serve.wait_ready(timeout=60)
        begun = time.monotonic()
        first = readiness(serve)
        (worker,) = first["worker_details"]
        assert worker["device"] == "cpu" and worker["compile"] == "aot" and worker["buckets"] == 2
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            job = submit(client, {"digit": 1, "n": 1, "sampler": "ddim", "steps": 10})
            assert wait_job(client, job)["status"] == "succeeded"  # served while compiling
            deadline = time.monotonic() + 300
            while readiness(serve)["compiled_buckets"] < 2:
                assert time.monotonic() < deadline, serve.log()[-3000:]
                time.sleep(0.5)
            compiled = time.monotonic() - begun
            job = submit(client, {"digit": 2, "n": 1, "sampler": "ddim", "steps": 10})
            assert wait_job(client, job)["status"] == "succeeded"  # on the compiled buckets
        assert serve.stop() == 0
    assert len(list((data / "compile-cache" / "aot").glob("*.pt2"))) == 2
    with Serve(model_dir, data, "lifecycle-warm-start.log", **compiling) as serve:
        warm = serve.wait_ready(timeout=60)
        deadline = time.monotonic() + 30
        while readiness(serve)["compiled_buckets"] < 2:  # loaded from the cache, not built again
            assert time.monotonic() < deadline, serve.log()[-3000:]
            time.sleep(0.2)
        assert serve.stop() == 0
        assert "ddpm_core.aot" not in serve.log()
    print(
        f"cold start ready in {cold:.1f} s (first readiness {first}); compiled after {compiled:.0f}; warm {warm:.1f} s"
    )


def test_a_sigkilled_serve_leaves_no_process_and_sigint_stops_it_at_once_while_compiling(
    model_dir: Path, tmp_path: Path
) -> None:
    compiling = {"DDPM_COMPILE": "1", "DDPM_MAX_BATCH": "2"}
    with Serve(model_dir, tmp_path / "data", "lifecycle-stop.log", **compiling) as serve:
        serve.wait_ready(timeout=60)
        wait_for_build(serve)
        started = time.monotonic()
        assert serve.stop() == 0  # SIGINT, while a bucket builds
        stopped = time.monotonic() - started
        assert not descendants(serve.process.pid)
    assert stopped < 10, f"an idle ddpm serve took {stopped:.1f} s to stop"
    with Serve(model_dir, tmp_path / "data2", "lifecycle-kill.log", **compiling) as serve:
        serve.wait_ready(timeout=60)
        below = wait_for_build(serve)
        assert {"celery", "uvicorn", "redis-server", "ddpm_core.aot"} <= {
            marker
            for pid in below
            for marker in ("celery", "uvicorn", "redis-server", "ddpm_core.aot")
            if marker in cmdline(pid)
        }
        os.kill(serve.process.pid, signal.SIGKILL)
        serve.process.wait()
        time.sleep(5)
        left = [f"{pid} {cmdline(pid)}" for pid in below if alive(pid)]
    assert left == [], f"alive 5 s after ddpm serve was SIGKILLed: {left}"
    print(f"idle ddpm serve stopped {stopped:.2f} s after SIGINT while compiling")


def test_a_killed_worker_s_job_runs_again_within_seconds(model_dir: Path, tmp_path: Path) -> None:
    """``ddpm serve`` tells Redis at once that its worker died: the next worker re-queues the job
    as it starts, long before the dead worker's heartbeat would have expired (60 s here)."""
    with Serve(model_dir, tmp_path / "data", "lifecycle-worker-kill.log", DDPM_WORKER_DEAD_AFTER_S="60") as serve:
        serve.wait_ready()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            job = submit(client, {"digit": 5, "n": 4, "sampler": "ddpm", "seed": 7})
            deadline = time.monotonic() + 60
            while int(client.get(f"/jobs/{job}").json()["progress"]["step"]) < 5:
                assert time.monotonic() < deadline, "the job did not start"
                time.sleep(0.05)
            os.killpg(serve.children()["worker"], signal.SIGKILL)
            killed = time.monotonic()
            while True:
                record = client.get(f"/jobs/{job}").json()
                if record["attempts"] == 2 and record["status"] == "running":
                    break
                assert time.monotonic() - killed < 45, record
                time.sleep(0.05)
            again = time.monotonic() - killed
            assert wait_job(client, job)["status"] == "succeeded"
        assert serve.stop() == 0
    assert again < 30
    print(f"the killed worker's job was running again {again:.1f} s after the kill")


def test_queued_jobs_are_not_sent_again_while_they_wait_and_a_job_past_its_limit_fails(
    model_dir: Path, tmp_path: Path
) -> None:
    """One job at a time: while a long job runs, three queued jobs wait in the broker as three
    messages (no re-sends growing with the backlog); the long job, past DDPM_MAX_JOB_S, is
    stopped by the engine and fails with a clear error; the three then run."""
    env = {"DDPM_MAX_JOB_S": "8", "DDPM_JOBS_IN_FLIGHT": "1"}
    with Serve(model_dir, tmp_path / "data", "lifecycle-backlog.log", **env) as serve:
        serve.wait_ready()
        store = serve.redis_client()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            long = submit(client, {"digit": 5, "n": 64, "sampler": "ddpm", "seed": 7})  # far longer than 8 s
            deadline = time.monotonic() + 30
            while client.get(f"/jobs/{long}").json()["status"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            waiting = [submit(client, {**DDPM_JOB, "seed": seed}) for seed in range(3)]
            lengths = []
            while client.get(f"/jobs/{long}").json()["status"] == "running":
                lengths.append(store.llen("ddpm"))
                time.sleep(0.25)
            record = wait_job(client, long, timeout=60)
            finished = [wait_job(client, job)["status"] for job in waiting]
        store.close()
        assert serve.stop() == 0
    assert len(lengths) > 10 and set(lengths[2:]) == {3}, lengths
    assert record["status"] == "failed" and "time limit of 8 s" in record["error"], record
    assert finished == ["succeeded"] * 3


def test_without_a_cxx_compiler_jobs_run_eagerly_and_readyz_says_why(model_dir: Path, tmp_path: Path) -> None:
    """What a slim image without g++ did: every job failed while /readyz said ready. Now the build
    fails in its child process, the engine keeps its eager forward, and /readyz names the error."""
    env = {"DDPM_COMPILE": "1", "DDPM_MAX_BATCH": "2", "CXX": "/nonexistent/g++"}
    with Serve(model_dir, tmp_path / "data", "lifecycle-no-compiler.log", **env) as serve:
        serve.wait_ready(timeout=60)
        deadline = time.monotonic() + 120
        while not (worker := readiness(serve)["worker_details"][0])["compile_errors"]:
            assert time.monotonic() < deadline, serve.log()[-3000:]
            time.sleep(0.5)
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            job = submit(client, {"digit": 1, "n": 3, "sampler": "ddim", "steps": 10})
            assert wait_job(client, job)["status"] == "succeeded"
        assert serve.stop() == 0
    assert worker["compiled_buckets"] == 0 and "build exited with status 1" in worker["compile_errors"], worker
    print(f"without a compiler: {worker['compile_errors']}")


def test_a_worker_asked_for_cuda_without_a_gpu_exits_and_says_why(redis_server, model_dir: Path) -> None:
    """DDPM_DEVICE=cuda (the GPU image) never falls back to the CPU silently."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = service_env(redis_server.url, model_dir, DDPM_DEVICE="cuda")
    process = start_logged(worker_command(queue=KEY_PREFIX), env, "worker-no-cuda.log")
    assert process.wait(timeout=60) == 3
    log = (ARTIFACTS / "worker-no-cuda.log").read_text(errors="replace")
    assert "the worker cannot start: DDPM_DEVICE=cuda" in log and "CUDA is not available" in log
