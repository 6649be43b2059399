"""A default job in under a second: the fast samplers through the real stack, as a client sees them.

    python benchmarks/bench_fast.py [--checkpoint checkpoints/mnist.safetensors] [--threads 2]
                                    [--repeats 3] [--sequential 20] [--compile-cache DIR] [--skip-ddpm]

Starts the stack as ``ddpm serve`` does (an embedded redis-server, the API, one worker that
compiles its forward buckets into ``--compile-cache``), waits until every bucket is compiled (a
warm server), then measures in one run, side by side:

1. ``default``: the README's job ``{"digit": 3, "n": 16}`` (the model's guidance) with each sampler at
   the steps it is offered at (UniPC and DPM-Solver++ 8, DDIM 10 and 50, DDPM all): POST to PNG,
   median of ``--repeats``;
2. ``one digit``: ``{"digit": 3, "n": 1}`` with UniPC at 8 steps, ``--sequential`` jobs one after
   another: median and p95 POST to PNG, and where the time goes: the API's answer to the POST, the
   hop to the worker (queue), the worker's phases (GET /jobs/{id}: timings; the engine's forward and
   its host side from its counters), storing the results, the terminal event reaching the client
   and the PNG's GET;
3. ``16 x n=1``: 16 one-digit jobs at 8 steps sent at once against the same 16 one at a time
   (throughput ratio), with the engine's ticks: mean rows, forward and host milliseconds per tick;
4. ``16 x DDIM 100-200``: the same with one-digit DDIM jobs of 100 to 200 steps.

Every figure is wall time on this machine; the client runs here too (its threads share the
cores with the server, as a page's browser on the same machine would).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_load import percentile, stack_env, wait_ready  # noqa: E402

from serve.command import api_command, stop_process, worker_command  # noqa: E402
from serve.redis_server import EmbeddedRedis, free_port  # noqa: E402

logger = logging.getLogger("bench_fast")
PREFIX = "fast"
TERMINAL = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 0.5


@dataclass
class Job:
    """One job as the client saw it (perf_counter seconds from its POST) and its record."""

    post_s: float
    terminal_s: float
    png_s: float
    posted_at: float  # wall clock at the POST (time.time)
    terminal_at: float
    record: dict = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.png_s

    def stamp(self, name: str) -> float:
        return datetime.fromisoformat(self.record[name]).timestamp()


def run_job(base: str, body: dict) -> Job:
    """POST, follow the event stream to its terminal event, GET the PNG, read the record."""
    with httpx.Client(base_url=base, timeout=600) as http:
        posted_at, started = time.time(), time.perf_counter()
        answer = http.post("/generate", json=body)
        if answer.status_code != 202:
            raise RuntimeError(answer.text)
        post_s = time.perf_counter() - started
        job_id = answer.json()["id"]
        with http.stream("GET", f"/jobs/{job_id}/events") as events:
            for line in events.iter_lines():
                if line.startswith("event:") and line.split(":", 1)[1].strip() in TERMINAL:
                    break
        terminal_s, terminal_at = time.perf_counter() - started, time.time()
        png = http.get(f"/jobs/{job_id}/png")
        png_s = time.perf_counter() - started
        record = http.get(f"/jobs/{job_id}").json()
    if record["status"] != "succeeded" or png.status_code != 200:
        raise RuntimeError(f"job {job_id}: {record['status']} {record.get('error')}")
    return Job(post_s, terminal_s, png_s, posted_at, terminal_at, record)


def run_together(base: str, bodies: list[dict]) -> tuple[float, list[Job]]:
    """Every body from its own client thread at once; (wall seconds, jobs)."""
    jobs: list[Job] = []
    errors: list[str] = []
    gate = threading.Barrier(len(bodies))

    def client(body: dict) -> None:
        gate.wait()
        try:
            jobs.append(run_job(base, body))
        except Exception as error:
            errors.append(str(error))

    threads = [threading.Thread(target=client, args=(body,)) for body in bodies]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    return time.perf_counter() - started, jobs


def run_one_by_one(base: str, bodies: list[dict]) -> tuple[float, list[Job]]:
    started = time.perf_counter()
    jobs = [run_job(base, body) for body in bodies]
    return time.perf_counter() - started, jobs


class Counters:
    """The worker's engine counters (ticks, rows, busy and forward seconds) as it reports them."""

    def __init__(self, store: redis.Redis) -> None:
        self.store = store

    def read(self) -> dict[str, float]:
        time.sleep(3 * HEARTBEAT_S)  # the next report carries everything done so far
        for name in self.store.zrange(f"{PREFIX}:workers", 0, -1):
            stats = self.store.hgetall(f"{PREFIX}:worker-stats:{name}")
            if stats:
                return {key: float(stats.get(key, 0)) for key in ("ticks", "rows", "busy_seconds", "forward_seconds")}
        return {"ticks": 0.0, "rows": 0.0, "busy_seconds": 0.0, "forward_seconds": 0.0}

    @staticmethod
    def ticks(before: dict[str, float], after: dict[str, float]) -> tuple[int, float, float, float]:
        """(ticks, mean rows per tick, forward ms per tick, host ms per tick) between two reads."""
        ticks = int(after["ticks"] - before["ticks"])
        if not ticks:
            return 0, 0.0, 0.0, 0.0
        forward = (after["forward_seconds"] - before["forward_seconds"]) / ticks * 1000
        busy = (after["busy_seconds"] - before["busy_seconds"]) / ticks * 1000
        return ticks, (after["rows"] - before["rows"]) / ticks, forward, busy - forward


def default_jobs(base: str, repeats: int, skip_ddpm: bool) -> list[tuple[str, int, float]]:
    """(sampler, steps, median seconds POST to PNG) of the default-size job with each sampler."""
    rows = []
    plan = [("uni_pc", 8), ("dpmpp_2m", 8), ("ddim", 10), ("ddim", 50)] + ([] if skip_ddpm else [("ddpm", None)])
    for sampler, steps in plan:
        body = {"digit": 3, "n": 16, "sampler": sampler, "seed": 0}
        if steps is not None:
            body["steps"] = steps
        times = [run_job(base, body) for _ in range(1 if sampler == "ddpm" else repeats)]
        rows.append((sampler, times[0].record["params"]["steps"], statistics.median(job.total_s for job in times)))
        logger.info("default job, %s %s: %.3f s", sampler, rows[-1][1], rows[-1][2])
    return rows


def breakdown(jobs: list[Job]) -> dict[str, float]:
    """Median milliseconds of each part of a job, POST to PNG."""
    parts: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        parts.setdefault(name, []).append(seconds * 1000)

    for job in jobs:
        timings = job.record["timings"]
        started, finished = job.stamp("started_at"), job.stamp("finished_at")
        add("POST answered", job.post_s)
        add("queue hop (POST to the worker's claim)", started - job.posted_at)
        for name in ("load_s", "generate_s", "check_s", "encode_s"):
            add(f"worker: {name[:-2]}", timings[name])
        add("worker: store results (Redis)", finished - started - sum(timings.values()))
        add("terminal event reaches the client", job.terminal_at - finished)
        add("GET the PNG", job.png_s - job.terminal_s)
        add("total, POST to PNG", job.total_s)
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "mnist.safetensors")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the worker")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=20, help="one-digit jobs one after another")
    parser.add_argument("--compile-cache", type=Path, help="keep compiled buckets here between runs")
    parser.add_argument("--skip-ddpm", action="store_true", help="leave out the 1000-step default job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logs = Path(tempfile.mkdtemp(prefix="bench-fast-"))
    cache = args.compile_cache or logs / "compile"
    with EmbeddedRedis() as server:
        env = stack_env(
            server.url,
            args.checkpoint,
            logs,
            PREFIX,
            args.threads,
            DDPM_COMPILE_CACHE_DIR=str(cache),
            DDPM_HEARTBEAT_S=str(HEARTBEAT_S),
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = subprocess.Popen(
            api_command("127.0.0.1", port), env=env, stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT
        )
        worker = subprocess.Popen(
            worker_command(queue=PREFIX), env=env, stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT
        )
        counters = Counters(redis.Redis.from_url(server.url, decode_responses=True))
        try:
            started = time.perf_counter()
            wait_ready(base, worker)
            logger.info("warm: every bucket compiled %.1f s after the start", time.perf_counter() - started)
            for _ in range(3):  # the first calls of each process
                run_job(base, {"digit": 3, "n": 1, "sampler": "uni_pc", "steps": 8})
            defaults = default_jobs(base, args.repeats, args.skip_ddpm)
            digit = {"digit": 3, "n": 1, "sampler": "uni_pc", "steps": 8}
            before = counters.read()
            _, sequential = run_one_by_one(base, [{**digit, "seed": i} for i in range(args.sequential)])
            one_digit_ticks = Counters.ticks(before, counters.read())
            workloads = {
                "16 x n=1, UniPC 8": [{**digit, "seed": 100 + i} for i in range(16)],
                "16 x n=1, DDIM 100-200": [
                    {"digit": i % 10, "n": 1, "sampler": "ddim", "steps": 100 + 100 * i // 15, "seed": 200 + i}
                    for i in range(16)
                ],
            }
            concurrency = []
            for name, bodies in workloads.items():
                before = counters.read()
                together_s, _ = run_together(base, bodies)
                shared = Counters.ticks(before, counters.read())
                alone_s, _ = run_one_by_one(base, bodies)
                concurrency.append((name, together_s, alone_s, shared))
                logger.info("%s: together %.2f s, one at a time %.2f s", name, together_s, alone_s)
        finally:
            stop_process(worker, "worker", grace=30)
            stop_process(api, "API")
    print_tables(defaults, sequential, one_digit_ticks, concurrency)
    print(f"\n(logs in {logs})")
    return 0


def print_tables(defaults, sequential: list[Job], one_digit_ticks, concurrency) -> None:
    fast = next(seconds for sampler, steps, seconds in defaults if sampler == "uni_pc")
    ddim50 = next((seconds for sampler, steps, seconds in defaults if sampler == "ddim" and steps == 50), None)
    print("\n| default job {digit: 3, n: 16} | steps | POST to PNG, s | of DDIM 50's time |")
    print("| --- | ---: | ---: | ---: |")
    for sampler, steps, seconds in defaults:
        share = f"{seconds / ddim50:.2f}" if ddim50 else "-"
        print(f"| {sampler} | {steps} | {seconds:.3f} | {share} |")
    totals = [job.total_s for job in sequential]
    print(
        f"\none digit (n = 1, UniPC 8, guidance on), {len(sequential)} jobs one after another: median "
        f"{statistics.median(totals) * 1000:.1f} ms, p95 {percentile(totals, 0.95) * 1000:.1f} ms "
        f"(UniPC {fast:.3f} s for 16 digits)"
    )
    ticks, rows, forward_ms, host_ms = one_digit_ticks
    print("\n| where one digit's time goes (median of the jobs) | ms |")
    print("| --- | ---: |")
    for name, value in breakdown(sequential).items():
        print(f"| {name} | {value:.1f} |")
    if ticks:
        per_job = ticks / len(sequential)
        print(
            f"| of the worker's generate: the forward ({per_job:.0f} ticks x {forward_ms:.1f} ms) | "
            f"{per_job * forward_ms:.1f} |"
        )
        print(
            f"| of the worker's generate: the ticks' host side ({per_job:.0f} x {host_ms:.2f} ms) | "
            f"{per_job * host_ms:.1f} |"
        )
    print(
        "\n| 16 jobs | together, s | one at a time, s | throughput ratio | ticks | mean rows | forward ms/tick | "
        "host ms/tick |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, together_s, alone_s, (ticks, rows, forward_ms, host_ms) in concurrency:
        print(
            f"| {name} | {together_s:.2f} | {alone_s:.2f} | {alone_s / together_s:.2f}x | {ticks} | {rows:.1f} | "
            f"{forward_ms:.1f} | {host_ms:.1f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
