"""Load on the real stack: named workloads from concurrent clients, batching on beside off.

    python benchmarks/bench_load.py [--workloads n1-mixed,default4,single,n64] [--threads 2]
                                    [--checkpoint checkpoints/mnist.safetensors] [--modes batched,one-at-a-time]

Starts an embedded redis-server and the API once, then for each mode a fresh worker process:

* ``batched``: the engine as shipped (``DDPM_JOBS_IN_FLIGHT=16``, compiled forward; measured
  once every bucket is compiled: keep ``DDPM_COMPILE_CACHE_DIR`` between runs to skip the build);
* ``batched-eager``: the same without compiling;
* ``one-at-a-time``: ``DDPM_JOBS_IN_FLIGHT=1`` and ``DDPM_COMPILE=0``, which is the eager
  one-job-at-a-time path the worker had before the engine.

Each workload's jobs are sent by as many client threads as it has jobs, all released at once.
A client POSTs, follows the job's event stream to its terminal event and fetches the PNG.
The table has, per workload and mode: digits per second (all samples over the wall time from
the first POST to the last PNG), p50 and p95 latency from POST to PNG, and the mean batch
(forward rows per engine tick, from the worker's counters in Redis) with its occupancy of the
batch cap. Workloads:

* ``n1-mixed``: 16 jobs of one digit each, DDIM with 20, 30 or 50 steps and guidance 0, 0.5 or 1;
* ``default4``: 4 default jobs, ``{"digit": d, "n": 16}`` (DDPM 1000 steps, the model's guidance);
* ``single``: one default job alone;
* ``n64``: one job of 64 digits, DDIM 50 steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve.command import api_command, stop_process, worker_command  # noqa: E402
from serve.redis_server import EmbeddedRedis, free_port  # noqa: E402

logger = logging.getLogger("bench_load")
PREFIX = "bench"
TERMINAL = ("succeeded", "failed", "cancelled")
WORKLOADS: dict[str, list[dict]] = {
    "n1-mixed": [
        {
            "digit": i % 10,
            "n": 1,
            "sampler": "ddim",
            "steps": (20, 30, 50)[i % 3],
            "guidance": (0.0, 0.5, 1.0)[(i // 3) % 3],
        }
        for i in range(16)
    ],
    "default4": [{"digit": digit, "n": 16} for digit in (3, 5, 7, 9)],
    "single": [{"digit": 3, "n": 16}],
    "n64": [{"digit": 8, "n": 64, "sampler": "ddim", "steps": 50}],
}
MODES = {
    "batched": {"DDPM_JOBS_IN_FLIGHT": "16", "DDPM_COMPILE": "1"},
    "batched-eager": {"DDPM_JOBS_IN_FLIGHT": "16", "DDPM_COMPILE": "0"},
    "one-at-a-time": {"DDPM_JOBS_IN_FLIGHT": "1", "DDPM_COMPILE": "0"},
}


@dataclass
class Result:
    workload: str
    mode: str
    digits: int
    seconds: float
    latencies: list[float]
    mean_batch: float | None
    cap: int | None
    engine_seconds: float = 0.0  # the engine's busy seconds (its ticks) during the workload


def run_workload(base: str, bodies: list[dict], seed: int) -> tuple[float, list[float]]:
    """Send every body from its own client at once; (wall seconds, POST->PNG latency per job)."""
    latencies: list[float] = []
    errors: list[str] = []
    gate = threading.Barrier(len(bodies))
    lock = threading.Lock()

    def client(index: int, body: dict) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            gate.wait()
            started = time.perf_counter()
            answer = http.post("/generate", json={**body, "seed": seed + 1000 * index})
            if answer.status_code != 202:
                with lock:
                    errors.append(answer.text)
                return
            job = answer.json()["id"]
            with http.stream("GET", f"/jobs/{job}/events", timeout=None) as events:  # as a client would
                for line in events.iter_lines():
                    if line.startswith("event:") and line.split(":", 1)[1].strip() in TERMINAL:
                        break
            record = http.get(f"/jobs/{job}").json()
            png = http.get(f"/jobs/{job}/png")
            with lock:
                if record["status"] != "succeeded" or png.status_code != 200:
                    errors.append(f"job {job}: {record['status']} {record.get('error')}")
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=item) for item in enumerate(bodies)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    return time.perf_counter() - started, latencies


def engine_counters(store: redis.Redis) -> tuple[int, int, int | None, float]:
    """(ticks, rows, max_batch, busy seconds) of the one worker reporting."""
    names = store.zrange(f"{PREFIX}:workers", 0, -1)
    for name in names:
        stats = store.hgetall(f"{PREFIX}:worker-stats:{name}")
        if stats:
            busy = float(stats.get("busy_seconds", 0.0))
            return int(stats["ticks"]), int(stats["rows"]), int(stats["max_batch"]), busy
    return 0, 0, None, 0.0


def wait_ready(base: str, worker: subprocess.Popen, timeout: float = 900) -> None:
    """Wait for /readyz 200 and for every forward bucket to be compiled (a worker is ready at
    once and compiles in the background: the benchmark measures the compiled engine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError("the worker exited; see its log")
        try:
            response = httpx.get(f"{base}/readyz", timeout=5)
            state = response.json()
            if response.status_code == 200 and state.get("compiled_buckets") == state.get("buckets"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the worker did not become ready")


def stack_env(redis_url: str, checkpoint: Path, model_dir: Path, prefix: str, threads: int, **extra: str) -> dict:
    """The environment of a benchmark's API and worker: this process's, without its DDPM_
    settings, serving ``checkpoint`` alone under ``prefix`` (also the queue's name)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    env.update(
        REDIS_URL=redis_url,
        DDPM_CHECKPOINT=str(checkpoint.resolve()),
        DDPM_DEFAULT_MODEL=checkpoint.stem,
        DDPM_MODEL_DIR=str(model_dir),  # only the checkpoint above
        DDPM_KEY_PREFIX=prefix,
        DDPM_QUEUE_NAME=prefix,
        DDPM_TORCH_THREADS=str(threads),
        DDPM_MAX_QUEUE="256",
        **extra,
    )
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "mnist.safetensors")
    parser.add_argument("--workloads", default="n1-mixed,default4,single,n64")
    parser.add_argument("--modes", default="batched,one-at-a-time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the worker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workloads = [name.strip() for name in args.workloads.split(",")]
    modes = [name.strip() for name in args.modes.split(",")]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    for name in modes:
        if name not in MODES:
            parser.error(f"unknown mode {name!r}; known: {', '.join(MODES)}")

    logs = Path(tempfile.mkdtemp(prefix="bench-load-"))
    results: list[Result] = []
    with EmbeddedRedis() as server:
        env = stack_env(server.url, args.checkpoint, logs, PREFIX, args.threads, OMP_NUM_THREADS=str(args.threads))
        port = free_port()
        api = subprocess.Popen(
            api_command("127.0.0.1", port), env=env, stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        store = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            for mode in modes:
                log = (logs / f"worker-{mode}.log").open("wb")
                worker = subprocess.Popen(
                    worker_command(queue=PREFIX), env={**env, **MODES[mode]}, stdout=log, stderr=subprocess.STDOUT
                )
                try:
                    started = time.perf_counter()
                    wait_ready(base, worker)
                    logger.info("%s: worker ready in %.1f s", mode, time.perf_counter() - started)
                    for workload in workloads:
                        ticks, rows, cap, busy = engine_counters(store)
                        seconds, latencies = run_workload(base, WORKLOADS[workload], args.seed)
                        time.sleep(2.5)  # the worker's counters reach Redis with its next heartbeat
                        ticks2, rows2, cap, busy2 = engine_counters(store)
                        mean_batch = (rows2 - rows) / (ticks2 - ticks) if ticks2 > ticks else None
                        engine_s = busy2 - busy
                        digits = sum(body["n"] for body in WORKLOADS[workload])
                        results.append(Result(workload, mode, digits, seconds, latencies, mean_batch, cap, engine_s))
                        logger.info("%s / %s: %.1f s, %.2f digits/s", workload, mode, seconds, digits / seconds)
                finally:
                    stop_process(worker, f"worker ({mode})", grace=30)
                    store.delete(*store.keys(f"{PREFIX}:worker-stats:*") or ["-"])
        finally:
            stop_process(api, "API")
    print_table(results, modes)
    print(f"\n(logs in {logs})")
    return 0


def print_table(results: list[Result], modes: list[str]) -> None:
    columns = "workload | mode | digits | wall s | engine busy s | digits/s | p50 s | p95 s | mean batch (rows)"
    print(f"\n| {columns} | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    baseline = {r.workload: r for r in results if r.mode == "one-at-a-time"}
    for r in results:
        rate = r.digits / r.seconds
        base = baseline.get(r.workload)
        speedup = f"{rate / (base.digits / base.seconds):.2f}x" if base else "-"
        batch = "-" if r.mean_batch is None else f"{r.mean_batch:.1f} of {r.cap}"
        print(
            f"| {r.workload} | {r.mode} | {r.digits} | {r.seconds:.1f} | {r.engine_seconds:.1f} | {rate:.2f} | "
            f"{statistics.median(r.latencies):.1f} | {percentile(r.latencies, 0.95):.1f} | {batch} | {speedup} |"
        )


if __name__ == "__main__":
    sys.exit(main())
