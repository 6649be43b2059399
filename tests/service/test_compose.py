"""The CPU compose stack, built and run for real: ``docker compose --profile cpu up --build api
worker-cpu`` with the shipped compose file, Dockerfiles and defaults; a job's PNG is served;
``docker compose --profile cpu down`` leaves no container.

Runs where a Docker engine answers and the two base images are there (no image registry is
reachable on the machines this project is built on: ``sh ../shared/docker/local-engine.sh``
installs an engine and builds stand-ins for them); skipped, saying why, elsewhere.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from serve.redis_server import free_port
from tests.service.conftest import ARTIFACTS, REPO

BASE_IMAGES = ("python:3.11-slim", "redis:7.4-alpine")


def docker_unavailable() -> str | None:
    """Why the compose stack cannot run here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client"
    if subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine answers (sh ../shared/docker/local-engine.sh starts one)"
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker Compose v2"
    missing = [
        image
        for image in BASE_IMAGES
        if subprocess.run([docker, "image", "inspect", image], capture_output=True, timeout=30).returncode != 0
    ]
    if missing:
        return f"base images {', '.join(missing)} are not present and no registry may be reachable"
    return None


@pytest.fixture()
def compose(tmp_path: Path):
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(reason)
    project = f"ddpmtest{secrets.token_hex(3)}"
    port = free_port()
    key = secrets.token_hex(16)
    env_file = tmp_path / "compose.env"
    env_file.write_text(f"REDIS_PASSWORD={secrets.token_hex(16)}\nDDPM_API_KEYS={key}\nDDPM_API_PORT={port}\n")
    env = dict(os.environ, DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
    base = ["docker", "compose", "--project-name", project, "--env-file", str(env_file), "--profile", "cpu"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = (ARTIFACTS / "compose.log").open("ab")

    def run(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
        log.flush()
        return subprocess.run([*base, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)

    try:
        yield run, f"http://127.0.0.1:{port}", key, project
    finally:
        run("down", "--volumes", "--timeout", "30", timeout=300)
        log.close()


def test_the_cpu_compose_stack_serves_a_job_and_down_leaves_nothing(compose) -> None:
    run, base, key, project = compose
    started = time.monotonic()
    assert run("up", "--build", "--detach", "api", "worker-cpu").returncode == 0, (
        "see test-artifacts/service/compose.log"
    )
    built = time.monotonic() - started
    deadline = time.monotonic() + 300
    readiness = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/readyz", timeout=5)
            readiness = response.json()
            if response.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    assert readiness.get("status") == "ready", readiness
    ready = time.monotonic() - started
    (worker,) = readiness["worker_details"]
    assert worker["device"] == "cpu" and worker["compile"] == "aot"
    with httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": key}) as client:
        response = client.post("/generate", json={"digit": 3, "n": 2, "sampler": "ddim", "steps": 10})
        assert response.status_code == 202, response.text
        job = response.json()["id"]
        while (record := client.get(f"/jobs/{job}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, record
            time.sleep(0.5)
        assert record["status"] == "succeeded", record
        assert client.get(f"/jobs/{job}/png").content[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = {}
    for image in ("ddpm-service-api", "ddpm-service-worker-cpu"):
        inspected = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, check=True)
        sizes[image] = json.loads(inspected.stdout)[0]["Size"] / 1e9
    assert run("down", "--timeout", "30").returncode == 0
    left = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert left == [], f"containers left after down: {left}"
    print(f"compose: up --build {built:.0f} s, ready {ready:.0f} s after up, image sizes (GB) {sizes}")
