"""A newcomer's first minutes with ``ddpm serve``, measured as a new user meets them: a fresh data
directory and an empty compile cache, the shipped model, the default job (``{"digit": 3, "n": 16}``:
DDPM 1000 steps with the model's default guidance), POST to PNG. One run, side by side:

* ``eager``: ``DDPM_COMPILE=0`` (the eager one-job path);
* ``cold``: the defaults with an empty compile cache: time to ``/readyz`` 200, the first job while
  the buckets compile in the background, the time until every bucket is compiled, a job after that;
* ``warm``: the same data directory started again: ready, compiled buckets, a job;
* faults: SIGINT of an idle stack (timed), the worker SIGKILLed under a running DDIM-200 n=1 job
  (seconds until it runs again and until it is done), SIGKILL of ``ddpm serve`` (processes it
  started still alive 5 s later).

    python benchmarks/bench_startup.py [--skip-eager] [--compile-timeout 1200]

Prints a Markdown table. It takes 10-20 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve.redis_server import free_port  # noqa: E402

DEFAULT_JOB = {"digit": 3, "n": 16}
SHORT_JOB = {"digit": 4, "n": 1, "sampler": "ddim", "steps": 200}


class Stack:
    """One ``ddpm serve`` on a data directory, its log in that directory."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"{data_dir.name}.log"
        environment = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
        environment.update(env, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "ddpm_core", "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*command, "--redis-port", "0"],
            cwd=REPO,
            env=environment,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self, timeout: float = 600) -> float:
        while time.monotonic() - self.started < timeout:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"not ready in {timeout} s; see {self.log}")

    def readiness(self) -> dict:
        return httpx.get(f"{self.base}/readyz", timeout=5).json()

    def job(self, body: dict, timeout: float = 900) -> tuple[str, float]:
        """POST to PNG: (job id, seconds)."""
        started = time.monotonic()
        job = httpx.post(f"{self.base}/generate", json=body, timeout=30).json()["id"]
        while (record := httpx.get(f"{self.base}/jobs/{job}", timeout=30).json())["status"] in ("queued", "running"):
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"job {job} not done in {timeout} s")
            time.sleep(0.1)
        if record["status"] != "succeeded":
            raise RuntimeError(f"job {job}: {record}")
        httpx.get(f"{self.base}/jobs/{job}/png", timeout=30).raise_for_status()
        return job, time.monotonic() - started

    def children(self) -> set[int]:
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                        found.add(int(entry.name))
                except (OSError, IndexError, ValueError):
                    pass
        return found

    def stop(self, sig: int = signal.SIGINT) -> float:
        started = time.monotonic()
        os.kill(self.process.pid, sig)
        self.process.wait(timeout=120)
        return time.monotonic() - started


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def worker_pid(stack: Stack) -> int:
    for pid in stack.children():
        if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise RuntimeError("no worker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--compile-timeout", type=float, default=1500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    rows: list[tuple[str, str]] = []

    if not args.skip_eager:
        eager = Stack(root / "eager", DDPM_COMPILE="0")
        rows.append(("eager: `ddpm serve` to /readyz 200", f"{eager.ready():.1f} s"))
        rows.append(("eager: default job, POST to PNG", f"{eager.job(DEFAULT_JOB)[1]:.1f} s"))
        rows.append(("eager: idle stack stopped by SIGINT", f"{eager.stop():.2f} s"))

    stopping = Stack(root / "stopping")
    stopping.ready()
    time.sleep(5)  # its first bucket builds now
    rows.append(("idle stack stopped by SIGINT while compiling", f"{stopping.stop():.2f} s"))

    data = root / "data"  # fresh: empty data directory and compile cache (kept in it)
    cold = Stack(data)
    ready = cold.ready()
    rows.append(("cold cache: `ddpm serve` to /readyz 200", f"{ready:.1f} s"))
    _, first = cold.job(DEFAULT_JOB)
    compiled = cold.readiness()
    done = f"{compiled['compiled_buckets']} of {compiled['buckets']} buckets compiled at its end"
    rows.append(("cold cache: first default job (buckets compiling behind it)", f"{first:.1f} s ({done})"))
    while (state := cold.readiness())["compiled_buckets"] < state["buckets"]:
        if time.monotonic() - cold.started > args.compile_timeout:
            break
        time.sleep(1)
    progress = f"{state['compiled_buckets']}/{state['buckets']}"
    rows.append(
        ("cold cache: every bucket compiled, after start", f"{time.monotonic() - cold.started:.0f} s ({progress})")
    )
    rows.append(("cold cache: default job, all buckets compiled", f"{cold.job(DEFAULT_JOB)[1]:.1f} s"))
    rows.append(("idle stack stopped by SIGINT", f"{cold.stop():.2f} s"))

    warm = Stack(data)
    rows.append(("warm cache (second start): to /readyz 200", f"{warm.ready():.1f} s"))
    time.sleep(2)
    state = warm.readiness()
    rows.append(("warm cache: buckets compiled 2 s after ready", f"{state['compiled_buckets']}/{state['buckets']}"))
    rows.append(("warm cache: default job", f"{warm.job(DEFAULT_JOB)[1]:.1f} s"))
    _, alone = warm.job(SHORT_JOB)
    rows.append(("DDIM-200 n=1 job alone", f"{alone:.1f} s"))

    job = httpx.post(f"{warm.base}/generate", json=SHORT_JOB, timeout=30).json()["id"]
    while httpx.get(f"{warm.base}/jobs/{job}", timeout=30).json()["progress"]["step"] < 20:
        time.sleep(0.02)
    os.killpg(worker_pid(warm), signal.SIGKILL)
    killed = time.monotonic()
    while True:
        record = httpx.get(f"{warm.base}/jobs/{job}", timeout=30).json()
        if record["attempts"] >= 2 and record["status"] in ("running", "succeeded"):
            break
        time.sleep(0.05)
    again = time.monotonic() - killed
    while httpx.get(f"{warm.base}/jobs/{job}", timeout=30).json()["status"] != "succeeded":
        time.sleep(0.05)
    done = f"done {time.monotonic() - killed:.1f} s after it"
    rows.append(("worker SIGKILLed mid-job: job running again after the kill", f"{again:.1f} s ({done})"))
    started_children = warm.children()
    warm.stop(signal.SIGKILL)
    time.sleep(5)
    left = [pid for pid in started_children if alive(pid)]
    rows.append(("`ddpm serve` SIGKILLed: its processes alive 5 s later", str(len(left))))

    print("| measure (fresh data directory, empty compile cache; this machine) | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nlogs and data under {root}")


if __name__ == "__main__":
    main()
