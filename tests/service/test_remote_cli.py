"""``ddpm generate --server URL`` against a real API with API keys (beside the session's worker):
it writes the grid and the GIF without importing torch, exits non-zero with one line for a wrong
key, an unreachable server or a job cancelled elsewhere, offers to cancel on Ctrl-C, and resumes
a dropped event stream (through a proxy that cuts it) without losing or repeating an event.
Also: 10 concurrent identical POSTs with one Idempotency-Key make exactly one job."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from client.service import ServiceClient
from serve.command import stop_process
from serve.redis_server import EmbeddedRedis, free_port
from tests.api.test_metrics import parse
from tests.service.conftest import REPO, read_events, service_env, start_api, wait_job

KEY = "cli-test-key"
# run the CLI as `ddpm` runs it, and report whether torch was imported
RUNNER = (
    "import sys\n"
    "from ddpm_core.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n"
    "sys.exit(status)\n"
)


@pytest.fixture(scope="module")
def keyed(redis_server: EmbeddedRedis, model_dir: Path, worker: subprocess.Popen) -> Iterator[str]:
    """An API with a key over the session worker's queue."""
    process, base = start_api(service_env(redis_server.url, model_dir, DDPM_API_KEYS=KEY), "api-cli.log")
    try:
        yield base
    finally:
        stop_process(process, "API")


def ddpm(*args: str, key: str | None = KEY, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    if key:
        env["DDPM_API_KEY"] = key
    # as from a terminal: Ctrl-C interrupts, even where the test process was started ignoring it
    # (a child inherits an ignored SIGINT, and Python then installs no KeyboardInterrupt handler)
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, "generate", *args],
        cwd=REPO,
        env=env,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    )


def finished(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_it_writes_the_grid_and_the_gif_without_torch(keyed: str, tmp_path: Path) -> None:
    png, gif = tmp_path / "grid.png", tmp_path / "out" / "denoise.gif"
    args = ["--server", keyed, "--digit", "3", "--n", "4", "--sampler", "ddim", "--steps", "12", "--seed", "9"]
    status, out, err = finished(
        ddpm(*args, "--png", str(png), "--gif", str(gif), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    )
    assert status == 0, err
    assert "TORCH False" in err and "Traceback" not in err
    assert out.startswith("job ") and "succeeded: 4 samples of mnist, ddim 12 steps" in out and "seed 9" in out
    assert Image.open(png).format == "PNG" and Image.open(gif).n_frames >= 2
    assert "12/12" in err  # the progress bar reached the last step


def test_a_wrong_key_and_no_server_are_one_line_each(keyed: str) -> None:
    status, out, err = finished(ddpm("--server", keyed, key="nope", stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    lines = [line for line in err.splitlines() if not line.startswith("TORCH")]
    assert status == 2 and lines == [
        "ddpm: error: the server refused the API key (a valid API key is required (X-API-Key header, or "
        "Authorization: Bearer)): give a valid one with --api-key or DDPM_API_KEY"
    ]
    nowhere = f"http://127.0.0.1:{free_port()}"
    status, out, err = finished(ddpm("--server", nowhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    lines = [line for line in err.splitlines() if not line.startswith("TORCH")]
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"ddpm: error: cannot reach the server at {nowhere}")
    status, out, err = finished(
        ddpm("--server", keyed, "--digit", "12", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    )
    assert status == 2 and "digit: class label 12 must be between 0 and 9" in err


class Drain(threading.Thread):
    """Reads a pipe to its end (so the child never blocks on it), keeping the text."""

    def __init__(self, pipe) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.pipe, self.text = pipe, ""
        self.start()

    def run(self) -> None:
        for chunk in iter(lambda: self.pipe.read(1), ""):
            self.text += chunk

    def job_id(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.text.splitlines():
                if line.startswith("job ") and " queued at position " in line:
                    return line.split()[1]
            time.sleep(0.05)
        raise AssertionError(f"no job id in: {self.text}")


def wait_running(http: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = http.get(f"/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start: {job}")


# all 200 steps of 128 rows (64 guided samples): seconds, never milliseconds
LONG = ["--digit", "3", "--n", "64", "--guidance", "2", "--sampler", "ddpm"]


def test_ctrl_c_offers_to_cancel_the_job(keyed: str) -> None:
    process = ddpm("--server", keyed, *LONG, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = Drain(process.stderr)
    with httpx.Client(base_url=keyed, timeout=30) as http:
        job_id = err.job_id()
        wait_running(http, job_id)
        process.send_signal(signal.SIGINT)
        process.stdin.write("y\n")
        process.stdin.flush()
        assert process.wait(timeout=60) == 130
        assert wait_job(http, job_id)["status"] == "cancelled"
    err.join(timeout=10)
    assert f"cancel job {job_id} on the server? [y/N]" in err.text and "cancel requested" in err.text


def test_a_job_cancelled_elsewhere_exits_1(keyed: str) -> None:
    process = ddpm("--server", keyed, *LONG, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = Drain(process.stderr)
    with httpx.Client(base_url=keyed, timeout=30, headers={"X-API-Key": KEY}) as http:
        job_id = err.job_id()
        wait_running(http, job_id)
        assert http.delete(f"/jobs/{job_id}").status_code == 202
        assert process.wait(timeout=60) == 1
    err.join(timeout=10)
    assert f"ddpm: job {job_id} cancelled" in err.text


class CuttingProxy:
    """A TCP proxy to the API that cuts the first event stream it carries after ``cut_after``
    events, mid-stream; it records each request's head."""

    def __init__(self, upstream_port: int, cut_after: int = 3) -> None:
        self.upstream_port, self.cut_after = upstream_port, cut_after
        self.heads: list[str] = []
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        head = downstream.recv(65536)
        self.heads.append(head.decode(errors="replace"))
        upstream.sendall(head)
        cut = "/events" in head.split(b"\r\n", 1)[0].decode() and self.cuts == 0
        if cut:
            self.cuts += 1
        threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
        seen = 0
        try:
            while chunk := upstream.recv(4096):
                if cut:
                    seen += chunk.count(b"event: progress")
                    if seen >= self.cut_after:
                        downstream.sendall(chunk[: len(chunk) // 2])  # an event cut in half, then the connection
                        break
                downstream.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (downstream, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(4096):
                target.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_event_stream_resumes_without_losing_or_repeating_a_step(keyed: str) -> None:
    proxy = CuttingProxy(int(keyed.rsplit(":", 1)[1]))
    try:
        with ServiceClient(keyed, KEY) as direct, ServiceClient(proxy.url, KEY) as service:
            job = direct.submit({"n": 1, "sampler": "ddim", "steps": 40, "seed": 3})
            seen = list(service.events(job["id"]))  # its first request on the proxy: the one it cuts
            assert service.reconnects >= 1 and proxy.cuts == 1
    finally:
        proxy.close()
    resumed = [head for head in proxy.heads if "/events" in head.split("\r\n", 1)[0]][1]
    assert "last-event-id: " in resumed.lower()
    with httpx.Client(base_url=keyed, timeout=30) as http:
        everything = read_events(http, job["id"])  # the stream as the server keeps it, read whole
    assert [event.id for event in seen] == [event["id"] for event in everything]
    steps = [event.data["step"] for event in seen if event.event == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 40 and seen[-1].event == "succeeded"


def test_ten_concurrent_identical_posts_with_one_key_make_one_job(keyed: str) -> None:
    headers = {"X-API-Key": KEY, "Idempotency-Key": str(uuid.uuid4())}
    body = {"n": 1, "sampler": "ddim", "steps": 10, "seed": 77}
    with httpx.Client(base_url=keyed, timeout=30, limits=httpx.Limits(max_connections=10)) as http:
        before = submitted(http)
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: http.post("/generate", json=body, headers=headers), range(10)))
        assert [answer.status_code for answer in answers] == [202] * 10
        ids = {answer.json()["id"] for answer in answers}
        assert len(ids) == 1
        assert sum(answer.headers.get("idempotent-replayed") == "true" for answer in answers) == 9
        (job_id,) = ids
        assert submitted(http) == before + 1  # one job made, nine answers replayed
        assert wait_job(http, job_id)["status"] == "succeeded"


def submitted(http: httpx.Client) -> float:
    samples = parse(http.get("/metrics").text)
    return samples[("ddpm_jobs_submitted_total", frozenset())]
