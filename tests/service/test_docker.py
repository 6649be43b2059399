"""The compose file and Dockerfiles, checked structurally (no Docker engine runs here)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from tests.service.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile(name: str) -> str:
    return (REPO / "docker" / name).read_text()


def run_lines(text: str) -> str:
    """The RUN instructions of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return "\n".join(line for line in joined.splitlines() if line.startswith("RUN "))


def test_services_health_checks_and_dependencies(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "api", "worker", "worker-cpu"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in ("api", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        environment = services[name]["environment"]
        assert "${REDIS_PASSWORD" in environment["REDIS_URL"] and "@redis:6379" in environment["REDIS_URL"]
        assert "./checkpoints:/app/checkpoints:ro" in services[name]["volumes"]


def test_redis_has_a_password_aof_on_a_named_volume_and_no_published_port(compose: dict) -> None:
    redis_service = compose["services"]["redis"]
    command = " ".join(redis_service["command"])
    assert "--requirepass" in command and "--appendonly yes" in command
    assert "REDIS_PASSWORD:?" in redis_service["environment"]["REDIS_PASSWORD"]
    assert "ports" not in redis_service and "expose" not in redis_service
    assert "redis-data:/data" in redis_service["volumes"]
    assert "redis-data" in compose["volumes"]


def test_api_publishes_8000_and_workers_reserve_a_gpu_with_a_cpu_variant(compose: dict) -> None:
    api = compose["services"]["api"]
    assert any(str(port).endswith(":8000") and "8000" in str(port) for port in api["ports"])
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "ports" not in worker  # scalable with --scale worker=N
    assert "container_name" not in worker
    cpu = compose["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["environment"]["DDPM_DEVICE"] == "cpu"
    assert "--profile cpu" in COMPOSE.read_text()
    for service in compose["services"].values():
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file()
            assert service["build"]["context"] == "."


def test_api_image_is_slim_and_has_no_torch() -> None:
    text = dockerfile("api.Dockerfile")
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    runs = run_lines(text)
    assert "torch" not in runs.replace("'torch' not in sys.modules", "")
    assert "['optional-dependencies']['service']" in runs and "pip install --no-deps ." in runs
    assert "api.app:create_app" in text and "--factory" in text
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_worker_images_install_the_project_as_the_readme_does() -> None:
    gpu = dockerfile("worker.Dockerfile")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", gpu, re.M).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    assert "pip install '.[service]'" in run_lines(gpu)
    cpu = dockerfile("worker-cpu.Dockerfile")
    assert "pip install torch==2.13.0 -e '.[service]'" in run_lines(cpu)
    readme = REPO / "README.md"
    if readme.is_file() and "pip install" in readme.read_text():
        assert "pip install torch==2.13.0 -e '.[service]'" in readme.read_text()
    for text in (gpu, cpu):
        assert "worker.celery_app:app" in text and '--pool", "prefork"' in text and '--concurrency", "1"' in text
        assert "HEALTHCHECK" in text and "inspect ping" in text


@pytest.mark.parametrize("name", ["api", "worker", "worker-cpu"])
def test_images_copy_what_their_dockerignore_lets_through(name: str) -> None:
    text = dockerfile(f"{name}.Dockerfile")
    allowed = {
        line.strip("!/") for line in dockerfile(f"{name}.Dockerfile.dockerignore").splitlines() if line.startswith("!")
    }
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert path in allowed, f"{path} is copied but excluded from the build context"
            assert (REPO / path).exists() or path == "README.md"


def test_entry_points_named_in_images_exist() -> None:
    assert callable(importlib.import_module("api.app").create_app)
    assert importlib.import_module("worker.celery_app").app.main == "ddpm"
    assert Path(REPO / "api" / "static" / "index.html").is_file()
