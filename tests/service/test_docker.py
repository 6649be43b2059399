"""The compose file and Dockerfiles, checked structurally (no Docker engine runs here)."""

from __future__ import annotations

import importlib
import json
import re

import grimp
import pytest
import yaml

from tests.service.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile(name: str) -> str:
    return (REPO / "docker" / name).read_text()


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
    # the password is in a config file, not in the arguments; redis-server first, so the image's
    # entrypoint drops root
    command = redis_service["command"]
    assert command[0] == "redis-server" and "PASSWORD" not in " ".join(command)
    (config,) = redis_service["configs"]
    assert config["target"] == command[1]
    content = compose["configs"][config["source"]]["content"]
    assert 'requirepass "${REDIS_PASSWORD:?' in content and "appendonly yes" in content
    assert "REDIS_PASSWORD:?" in redis_service["environment"]["REDIS_PASSWORD"]
    assert "ports" not in redis_service and "expose" not in redis_service
    assert "redis-data:/data" in redis_service["volumes"]
    assert "redis-data" in compose["volumes"]


def test_the_published_api_requires_api_keys(compose: dict) -> None:
    environment = compose["services"]["api"]["environment"]
    assert environment["DDPM_API_KEYS"].startswith("${DDPM_API_KEYS:?")  # compose refuses to start without
    for name in ("worker", "worker-cpu"):
        assert "DDPM_API_KEYS" not in compose["services"][name]["environment"]


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
    for service in compose["services"].values():
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file()
            assert service["build"]["context"] == "."


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile(name))
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def copied_packages(name: str) -> set[str]:
    """The first-party packages a Dockerfile copies into its image."""
    copied = set()
    for instruction, arguments in dockerfile_instructions(name):
        if instruction == "COPY":
            sources = arguments.split()[:-1]
            copied.update(path.strip("./") for path in sources if (REPO / path / "__init__.py").is_file())
    return copied


def first_party_closure(*modules: str) -> set[str]:
    """The first-party packages that ``modules`` import, directly or not (by the import graph)."""
    graph = grimp.build_graph(*FIRST_PARTY, include_external_packages=True)
    found = set()
    for module in modules:
        found |= {name.split(".")[0] for name in graph.find_upstream_modules(module)} | {module.split(".")[0]}
    return found & set(FIRST_PARTY)


def image_command(name: str) -> list[str]:
    (command,) = [json.loads(args) for instruction, args in dockerfile_instructions(name) if instruction == "CMD"]
    return command


FIRST_PARTY = ("serve", "api", "worker", "contract", "ddpm_core")


def test_api_image_copies_what_the_api_imports_and_nothing_that_needs_torch() -> None:
    command = image_command("api.Dockerfile")
    assert command[:2] == ["uvicorn", "api.app:create_app"] and "--factory" in command
    module, attribute = command[1].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    needed = first_party_closure(module)
    assert needed <= copied_packages("api.Dockerfile"), "the API image lacks a package the API imports"
    assert "worker" not in copied_packages("api.Dockerfile")
    graph = grimp.build_graph(*FIRST_PARTY, include_external_packages=True)
    assert "torch" not in {name.split(".")[0] for name in graph.find_upstream_modules(module)}
    base = next(args for instruction, args in dockerfile_instructions("api.Dockerfile") if instruction == "FROM")
    assert re.match(r"python:3\.\d+-slim", base)


@pytest.mark.parametrize("name", ["worker.Dockerfile", "worker-cpu.Dockerfile"])
def test_worker_images_copy_what_the_worker_imports_and_run_its_app(name: str) -> None:
    command = image_command(name)
    app_reference = command[command.index("-A") + 1]
    module, attribute = app_reference.split(":")
    app = getattr(importlib.import_module(module), attribute)
    assert app.main == "ddpm" and "worker.tasks" in app.conf.include
    needed = first_party_closure(module, "worker.tasks", "worker.runner")
    assert needed <= copied_packages(name), f"{name} lacks a package the worker imports"


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker.Dockerfile", "worker-cpu.Dockerfile"])
def test_dependencies_are_installed_before_the_code_is_copied(name: str) -> None:
    """A code edit must not reinstall torch: every pip install of dependencies comes before the
    first COPY of a package, and the install after it adds the project alone (--no-deps)."""
    instructions = dockerfile_instructions(name)
    first_code = min(
        index
        for index, (instruction, arguments) in enumerate(instructions)
        if instruction == "COPY" and any((REPO / path / "__init__.py").is_file() for path in arguments.split()[:-1])
    )
    installs = [(index, args) for index, (instruction, args) in enumerate(instructions) if "pip install" in args]
    assert any(index < first_code for index, _ in installs)
    for index, arguments in installs:
        if index > first_code:
            assert "--no-deps" in arguments, arguments


def test_the_cpu_worker_image_has_a_compiler_and_takes_torch_from_a_chosen_index() -> None:
    instructions = dockerfile_instructions("worker-cpu.Dockerfile")
    arguments = {args.split("=")[0]: args for instruction, args in instructions if instruction == "ARG"}
    assert arguments["TORCH_INDEX_URL"] == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert "g++" in runs  # inductor builds C++ on the CPU
    assert "${TORCH_INDEX_URL:+--extra-index-url" in runs  # empty: the public index alone


def test_workers_keep_compiled_forwards_on_a_volume_and_the_gpu_worker_needs_a_gpu(compose: dict) -> None:
    for name in ("worker", "worker-cpu"):
        service = compose["services"][name]
        cache = service["environment"]["DDPM_COMPILE_CACHE_DIR"]
        assert f"compile-cache:{cache}" in service["volumes"]
        assert service["healthcheck"]["start_period"] == "120s"
    assert "compile-cache" in compose["volumes"]
    assert compose["services"]["worker"]["environment"]["DDPM_DEVICE"] == "cuda"  # no silent CPU fallback


@pytest.mark.parametrize("name", ["api", "worker", "worker-cpu"])
def test_images_copy_what_their_dockerignore_lets_through(name: str) -> None:
    allowed = {
        line.strip("!/") for line in dockerfile(f"{name}.Dockerfile.dockerignore").splitlines() if line.startswith("!")
    }
    for instruction, arguments in dockerfile_instructions(f"{name}.Dockerfile"):
        if instruction == "COPY":
            for path in arguments.split()[:-1]:
                assert path in allowed, f"{path} is copied but excluded from the build context"
                assert (REPO / path).exists()


def test_the_metrics_profile_runs_prometheus_scraping_the_api_with_its_key(compose: dict) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["metrics"]  # off unless asked for
    image, tag = prometheus["image"].split(":")
    assert image == "prom/prometheus" and re.fullmatch(r"v\d+\.\d+\.\d+", tag)  # pinned
    assert "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert all(str(port).startswith("127.0.0.1:") for port in prometheus["ports"])  # its UI has no login
    assert prometheus["depends_on"]["api"]["condition"] == "service_healthy"
    assert "DDPM_API_KEYS" in prometheus["environment"]["PROMETHEUS_API_KEY"]
    config = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["api:8000"]
    assert job["authorization"]["type"] == "Bearer"
    entrypoint = " ".join(prometheus["entrypoint"])
    assert f"> {job['authorization']['credentials_file']}" in entrypoint  # the file the key is written to
    assert "--config.file=/etc/prometheus/prometheus.yml" in entrypoint
    assert "prometheus-data" in compose["volumes"]


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker.Dockerfile", "worker-cpu.Dockerfile"])
def test_images_run_as_a_user_who_can_write_their_caches(name: str) -> None:
    """Not root (Celery warned in nine lines at every start), with a home (caches of torch and
    pip) and the compile cache directory its own."""
    instructions = dockerfile_instructions(name)
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    run = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert f"useradd --create-home --uid 10001 {users[-1]}" in run
    env = " ".join(arguments for instruction, arguments in instructions if instruction == "ENV")
    cache = re.search(r"DDPM_COMPILE_CACHE_DIR=(\S+)", env)
    if cache is not None:
        assert f"chown {users[-1]} {cache.group(1)}" in run
