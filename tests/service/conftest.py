"""Fixtures for the service tests: real parts only.

A redis-server on a free port, a tiny (untrained, 10-class, 200-step) checkpoint named
``mnist``, a Celery worker subprocess and the API under uvicorn on a free port, all for the
session; and for a test that writes models, a model directory and a stack of its own
(``own_model_dir``, ``own_stack``). Logs of the worker and API go to ``test-artifacts/service/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from serve.command import api_command, stop_process, worker_command
from serve.redis_server import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "service"
TIMESTEPS = 200
KEY_PREFIX = "ddpmtest"
JOBS_IN_FLIGHT = 4  # jobs a test worker holds at once


def make_tiny_checkpoint(path: Path, num_train_timesteps: int = TIMESTEPS) -> Path:
    """An untrained tiny class-conditional U-Net checkpoint (fast on a CPU; images are noise)."""
    import torch

    from ddpm_core.checkpoint import save_checkpoint
    from ddpm_core.models import UNet, UNetConfig
    from ddpm_core.schedule import NoiseSchedule

    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
        num_res_blocks=1,
        num_classes=10,
        dropout=0.0,
        norm_groups=4,
    )
    return save_checkpoint(
        path,
        UNet(config),
        NoiseSchedule.linear(num_train_timesteps),
        class_names=[str(digit) for digit in range(10)],
        sample_shape=(1, 28, 28),
        dataset="mnist",
        training={"default_guidance": 0.0},
    )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's model directory, the tiny ``mnist`` model alone, read by the session's API and
    worker and by many a test's own stack. Read-only: a test that writes models writes them into
    ``own_model_dir``; the teardown checks that nobody wrote here."""
    directory = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(directory / "mnist.safetensors")
    yield directory
    written = sorted(path.name for path in directory.iterdir())
    assert written == ["mnist.safetensors"], f"a test wrote into the shared model directory: {written}"


@pytest.fixture()
def own_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A model directory of the test's own, starting with a copy of the tiny ``mnist`` model: the
    models a test writes here are seen by its own processes only (start them with ``own_stack``)."""
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copyfile(model_dir / "mnist.safetensors", directory / "mnist.safetensors")
    return directory


def service_env(redis_url: str, model_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker or API process under test."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "DDPM_MODEL_DIR": str(model_dir),
            "DDPM_KEY_PREFIX": KEY_PREFIX,
            "DDPM_QUEUE_NAME": KEY_PREFIX,
            "DDPM_TORCH_THREADS": "1",
            "DDPM_COMPILE": "0",
            "DDPM_JOBS_IN_FLIGHT": str(
                JOBS_IN_FLIGHT
            ),  # eager: compiling is tested in tests/core/test_compiled.py and test_engine_service.py
            "DDPM_PREVIEW_COUNT": "5",
            "DDPM_GIF_FRAMES": "8",
            "DDPM_PROGRESS_INTERVAL_S": "0",
            "DDPM_HEARTBEAT_S": "0.5",
            "DDPM_LOST_MESSAGE_AFTER_S": "3",
            "DDPM_STALE_AFTER_S": "4",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def start_logged(command: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = (ARTIFACTS / log_name).open("ab")
    log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
    log.flush()
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_worker(redis_url: str, process: subprocess.Popen, prefix: str = KEY_PREFIX, timeout: float = 90) -> str:
    """Wait for a worker heartbeat under ``prefix``; its name."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}; see {ARTIFACTS}/worker.log")
        names = client.zrangebyscore(f"{prefix}:workers", time.time() - 10, "+inf")
        if names:
            return names[0]
        time.sleep(0.2)
    raise RuntimeError("the worker did not report within the time limit")


def start_api(env: dict[str, str], log_name: str = "api.log") -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = start_logged(api_command("127.0.0.1", port), env, log_name)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}; see {ARTIFACTS}/{log_name}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process, "API")
    raise RuntimeError("the API did not start")


@contextlib.contextmanager
def own_stack(redis_url: str, model_dir: Path, prefix: str, log_name: str) -> Iterator[str]:
    """A worker and the API of their own (key prefix and queue ``prefix``) over ``model_dir``; the
    API's URL. Logs: ``worker-LOG_NAME.log`` and ``api-LOG_NAME.log``."""
    env = service_env(redis_url, model_dir, DDPM_KEY_PREFIX=prefix, DDPM_QUEUE_NAME=prefix)
    worker = start_logged(worker_command(queue=prefix), env, f"worker-{log_name}.log")
    try:
        api, base = start_api(env, f"api-{log_name}.log")  # while the worker loads torch
        try:
            wait_for_worker(redis_url, worker, prefix)
            yield base
        finally:
            stop_process(api, "API")
    finally:
        stop_process(worker, "worker", grace=15)


@pytest.fixture(scope="session")
def worker(redis_server: EmbeddedRedis, model_dir: Path) -> Iterator[subprocess.Popen]:
    process = start_logged(worker_command(queue=KEY_PREFIX), service_env(redis_server.url, model_dir), "worker.log")
    try:
        wait_for_worker(redis_server.url, process)
        yield process
    finally:
        stop_process(process, "worker", grace=15)


@pytest.fixture(scope="session")
def api(redis_server: EmbeddedRedis, model_dir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    process, base = start_api(service_env(redis_server.url, model_dir))
    try:
        yield process, base
    finally:
        stop_process(process, "API")


@pytest.fixture(scope="session")
def base_url(api: tuple[subprocess.Popen, str], worker: subprocess.Popen) -> str:
    """The URL of a running API with a worker behind it."""
    return api[1]


CHECK_PREFIX = "ddpmcheck"
CLASSIFIER = REPO / "checkpoints" / "mnist_classifier.safetensors"


def make_sprites_checkpoint(path: Path) -> Path:
    """An untrained unconditional RGB U-Net of 8 x 8 images from a folder: no classifier judges it."""
    import torch

    from ddpm_core.checkpoint import save_checkpoint
    from ddpm_core.models import UNet, UNetConfig
    from ddpm_core.schedule import NoiseSchedule

    torch.manual_seed(0)
    config = UNetConfig(
        image_size=8,
        in_channels=3,
        base_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
        num_res_blocks=1,
        num_classes=0,
        dropout=0.0,
        norm_groups=4,
    )
    return save_checkpoint(
        path, UNet(config), NoiseSchedule.linear(100), class_names=[], sample_shape=(3, 8, 8), dataset="folder:sprites"
    )


@pytest.fixture(scope="session")
def check_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("check-models")
    shutil.copy(REPO / "checkpoints" / "mnist.safetensors", directory / "mnist.safetensors")
    shutil.copy(CLASSIFIER, directory / "mnist_classifier.safetensors")  # found by the default setting
    shutil.copy(REPO / "checkpoints" / "checkerboard.safetensors", directory / "checkerboard.safetensors")
    make_tiny_checkpoint(directory / "tiny.safetensors")
    make_sprites_checkpoint(directory / "sprites.safetensors")
    return directory


@pytest.fixture(scope="session")
def check_url(redis_server: EmbeddedRedis, check_model_dir: Path) -> Iterator[str]:
    """A worker and the API (their own key prefix and queue) over the shipped model and classifier."""
    env = service_env(redis_server.url, check_model_dir, DDPM_KEY_PREFIX=CHECK_PREFIX, DDPM_QUEUE_NAME=CHECK_PREFIX)
    worker: subprocess.Popen = start_logged(worker_command(queue=CHECK_PREFIX), env, "worker-check.log")
    try:
        wait_for_worker(redis_server.url, worker, prefix=CHECK_PREFIX)
        api, base = start_api(env, "api-check.log")
        try:
            yield base
        finally:
            stop_process(api, "API")
    finally:
        stop_process(worker, "worker", grace=15)


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """Poll until the job ends; its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def read_events(
    client: httpx.Client,
    job_id: str,
    last_event_id: str | None = None,
    limit: int | None = None,
    previews: bool = False,
) -> list[dict]:
    """Parse the SSE stream of a job into [{id, event, data}], stopping after ``limit`` events;
    with its preview events when ``previews``."""
    import json

    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict] = []
    params = {"previews": "true"} if previews else {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, params=params, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict = {}
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    current["data"] = json.loads(current.get("data", "{}"))
                    events.append(current)
                    if limit is not None and len(events) >= limit:
                        break
                current = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            current[name] = value[1:] if value.startswith(" ") else value
    return events
