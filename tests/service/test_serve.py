"""``ddpm serve``: one command brings up Redis, a worker and the API; Ctrl-C stops them all.
Its embedded Redis keeps its data (AOF) in ``--data-dir`` behind a password, so stopping and
starting ``ddpm serve`` loses no queued job and no result; its supervisor restarts a child
that dies and gives up on one that keeps dying right after its start.

The helpers here (``Serve``, ``serve_env``) are also used by ``test_serve_faults.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from serve.redis_server import PASSWORD_FILE, EmbeddedRedis, free_port, pick_port
from serve.supervisor import GaveUp, ProcessChild, RestartPolicy, Supervisor
from tests.service.conftest import ARTIFACTS, REPO, wait_job

DDIM = {"digit": 3, "n": 2, "sampler": "ddim", "steps": 10}


def serve_env(**extra: str) -> dict[str, str]:
    """The environment of a ``ddpm serve`` under test (small jobs, a worker declared dead fast)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_") and key != "REDIS_URL"}
    env.update(
        DDPM_TORCH_THREADS="1",
        DDPM_COMPILE="0",
        DDPM_GIF_FRAMES="6",
        DDPM_PREVIEW_COUNT="3",
        DDPM_HEARTBEAT_S="0.5",
        DDPM_LOST_MESSAGE_AFTER_S="3",
        DDPM_WORKER_DEAD_AFTER_S="3",
        DDPM_STALE_AFTER_S="4",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def child_pids(parent: int) -> dict[str, int]:
    """The ``worker``, ``API`` and ``redis`` processes whose parent is ``parent`` (from /proc)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != parent:
            continue
        for name, marker in (("worker", "celery"), ("API", "uvicorn"), ("redis", "redis-server")):
            if marker in cmdline:
                found[name] = int(entry.name)
    return found


class Serve:
    """A ``ddpm serve`` process under test, its log under test-artifacts/service/."""

    def __init__(self, model_dir: Path, data_dir: Path, log_name: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / log_name
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "ddpm_core", "serve", "--port", str(self.port), "--model-dir", str(model_dir)]
        command += ["--data-dir", str(data_dir), "--redis-port", "0", "--worker-grace", "15"]
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command, cwd=REPO, env=serve_env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode(errors="replace")

    def children(self) -> dict[str, int]:
        return child_pids(self.process.pid)

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait for ``/readyz`` 200 (Redis and a worker); the seconds it took."""
        start = time.monotonic()
        while True:
            assert self.process.poll() is None, self.log()[-4000:]
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            assert time.monotonic() - start < timeout, f"ddpm serve was not ready in {timeout} s:\n{self.log()[-4000:]}"
            time.sleep(0.2)

    def redis_client(self) -> redis.Redis:
        """A client of the embedded Redis, with the password from the data directory."""
        password = (self.data_dir / PASSWORD_FILE).read_text().strip()
        line = next(line for line in reversed(self.log().splitlines()) if "embedded Redis" in line)
        port = int(line.split("on port ")[1].split()[0].rstrip(","))
        return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5, decode_responses=True)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        """Ctrl-C (to the foreground group: ddpm serve only, its children have sessions of their own)
        or another signal."""
        os.killpg(self.process.pid, sig)
        return self.process.wait(timeout=timeout)

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.children().values():  # a worker a test paused must run to see its SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its children get SIGTERM (parent-death signal)
            self.process.wait()
        deadline = time.monotonic() + 15
        while self.children() and time.monotonic() < deadline:
            time.sleep(0.2)


def submit(client: httpx.Client, body: dict) -> str:
    response = client.post("/generate", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def pause_worker(serve: Serve) -> int:
    """SIGSTOP the worker's process group; wait until its pending BRPOP (1 s) has timed out, so
    that the next job stays in the Redis list. The worker's pid."""
    pid = serve.children()["worker"]
    os.killpg(pid, signal.SIGSTOP)
    time.sleep(2.5)
    return pid


def test_ddpm_serve_runs_the_stack_and_stops_on_ctrl_c(model_dir: Path, tmp_path: Path) -> None:
    with Serve(model_dir, tmp_path / "data", "serve.log") as serve:
        serve.wait_ready()
        with httpx.Client(base_url=serve.base, timeout=30) as client:
            assert "<form" in client.get("/").text
            job_id = submit(client, DDIM)
            assert wait_job(client, job_id)["status"] == "succeeded"
            gif = client.get(f"/jobs/{job_id}/gif")
            assert gif.headers["content-type"] == "image/gif" and gif.content[:6] == b"GIF89a"
        children = serve.children()
        assert set(children) == {"worker", "API", "redis"}
        sessions = {os.getsid(pid) for pid in children.values()}
        assert len(sessions) == 3 and os.getsid(serve.process.pid) not in sessions  # a signal to one spares the rest
        # the password: a 0600 file, needed by every client, never on a command line
        password_file = serve.data_dir / PASSWORD_FILE
        password = password_file.read_text().strip()
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and len(password) >= 32
        store = serve.redis_client()
        port = store.connection_pool.connection_kwargs["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET anything\r\n")
            assert sock.recv(100).startswith(b"-NOAUTH")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="wrong").ping()
        for pid in [serve.process.pid, *children.values()]:
            assert password not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        config = {key: store.config_get(key)[key] for key in ("appendonly", "appendfsync", "bind", "protected-mode")}
        assert config == {"appendonly": "yes", "appendfsync": "everysec", "bind": "127.0.0.1", "protected-mode": "yes"}
        store.close()
        # a second ddpm serve on the same data directory is refused (two servers on one AOF)
        command = [sys.executable, "-m", "ddpm_core", "serve", "--port", str(free_port())]
        command += ["--data-dir", str(serve.data_dir), "--model-dir", str(model_dir)]
        refused = subprocess.run(command, cwd=REPO, env=serve_env(), capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "another ddpm serve is using the data directory" in refused.stderr
        assert serve.stop() == 0
        text = serve.log()
    assert "Traceback" not in text, text[-3000:]
    assert "stopped" in text and password not in text
    for closed in (serve.port, port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", closed)) != 0, f"port {closed} still open after Ctrl-C"
    # the order of a clean stop: the API and the worker at once, then Redis (which they write to)
    order = [line for line in text.splitlines() if "serve." in line and "stopping the" in line]
    names = [line.split("stopping the ")[1].split(" (")[0] for line in order]
    assert sorted(names[:2]) == ["API", "worker"] and names[2:] == ["Redis server"], names


def test_stopping_and_starting_ddpm_serve_keeps_queued_jobs_and_results(model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with Serve(model_dir, data_dir, "serve-restart.log") as first:
        first.wait_ready()
        with httpx.Client(base_url=first.base, timeout=30) as client:
            done = submit(client, DDIM)
            assert wait_job(client, done)["status"] == "succeeded"
            png = client.get(f"/jobs/{done}/png").content
            pause_worker(first)
            queued = [submit(client, {**DDIM, "digit": digit}) for digit in (1, 2)]
            assert [client.get(f"/jobs/{job}").json()["status"] for job in queued] == ["queued", "queued"]
        assert first.stop(signal.SIGTERM) == 0  # the paused worker gets SIGTERM and SIGCONT, and stops
        first_log = first.log()
    assert not any(f"[{job}] received" in first_log for job in queued)  # still queued when it stopped
    with Serve(model_dir, data_dir, "serve-restart.log") as second:
        second.wait_ready()
        with httpx.Client(base_url=second.base, timeout=30) as client:
            assert client.get(f"/jobs/{done}").json()["status"] == "succeeded"
            assert client.get(f"/jobs/{done}/png").content == png
            for job in queued:
                record = wait_job(client, job)
                assert record["status"] == "succeeded", record
                assert client.get(f"/jobs/{job}/png").content[:8] == b"\x89PNG\r\n\x1a\n"
        assert second.stop() == 0
        second_log = second.log()
    assert all(f"[{job}] received" in second_log for job in queued)
    assert "Traceback" not in second_log


def test_embedded_redis_keeps_its_data_and_password_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with EmbeddedRedis(data_dir=data_dir) as server:
        password = (data_dir / PASSWORD_FILE).read_text().strip()
        assert server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        assert stat.S_IMODE((data_dir / PASSWORD_FILE).stat().st_mode) == 0o600
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        client = redis.Redis.from_url(server.url)
        client.set("kept", "1")
        client.set("expiring", "2", ex=600)
        time.sleep(2.5)  # appendfsync everysec: a crash may lose the writes of the last 1-2 s, no more
        os.kill(server.pid, signal.SIGKILL)  # no shutdown: the AOF alone must hold the writes
        server.process.wait()
        server.start()  # in place: the same port, password and data
        assert client.get("kept") == b"1" and 0 < client.ttl("expiring") <= 600
        client.close()
    again = EmbeddedRedis(data_dir=data_dir)  # a later run: the same password, so stored URLs keep working
    assert again.password == password
    with again:
        assert redis.Redis.from_url(again.url).get("kept") == b"1"
    assert (data_dir / "appendonly.aof").is_file()
    # the throw-away server of the tests: its temporary directory goes with it
    with EmbeddedRedis() as throwaway:
        temporary = throwaway.data_dir
        assert redis.Redis.from_url(throwaway.url).ping()
    assert not temporary.exists()
    # a preferred port is used only when free
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert pick_port(busy) != busy
    free = free_port()
    assert pick_port(free) == free


def test_supervisor_restarts_a_dead_child_and_gives_up_on_one_that_keeps_dying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RestartPolicy(initial_delay_s=0.1, max_delay_s=0.5, fast_exit_s=2.0, max_fast_failures=4)
    assert [policy.delay(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    steady = ProcessChild("steady", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), grace=2)
    flaky = ProcessChild("flaky", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), grace=2)
    supervisor = Supervisor([steady, flaky], policy, tick_s=0.02)
    caplog.set_level("INFO", logger="serve.supervisor")
    start = time.monotonic()
    try:
        supervisor.start()
        first = steady.pid
        os.kill(first, signal.SIGKILL)
        with pytest.raises(GaveUp, match="giving up on the flaky: it exited with exit status 3"):
            supervisor.run(lambda: time.monotonic() - start > 30)
        assert steady.pid != first and steady.poll() is None  # restarted, and kept running
    finally:
        supervisor.stop(lambda: False)
    assert steady.poll() is not None
    assert time.monotonic() - start < 20
    text = caplog.text
    assert "the steady exited with signal SIGKILL" in text and "restarted the steady" in text
    # three fast failures are restarted with growing delays; the fourth is the last
    assert text.count("the flaky exited with exit status 3") == 3
    assert all(f"restarting it in {delay} s" in text for delay in ("0.2", "0.4", "0.5"))
    assert "failed 4 times in a row, each within 2 s of its start" in text
