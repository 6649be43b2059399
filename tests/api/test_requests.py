"""Request resolution and the API in-process (FastAPI's TestClient, a real Redis, no worker):
a request becomes one exact JobSpec; every limit comes from Settings, in validation and in
OpenAPI alike; every answer has a schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from api.resolve import FieldError, resolve_spec
from api.schemas import GenerateRequest
from contract.layout import JobRecord
from contract.registry import ModelInfo, ModelRegistry
from contract.settings import Limits, Settings
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import make_tiny_checkpoint

LIMITS = Limits(max_n=64, max_pixels_per_job=65536, max_points_per_job=10000, min_steps=None, max_guidance=10.0)
MODEL = ModelInfo(
    name="mnist",
    dataset="mnist",
    model_kind="unet",
    class_names=[str(digit) for digit in range(10)],
    conditional=True,
    sample_shape=[1, 28, 28],
    num_train_timesteps=1000,
    parameter_count=1,
    default_guidance=0.5,
    weights_sha256="cd" * 32,
    path=Path("mnist.safetensors"),
)


def resolve(**fields) -> object:
    return resolve_spec(GenerateRequest.model_validate(fields), MODEL, LIMITS)


def test_a_request_resolves_to_an_exact_spec() -> None:
    spec = resolve(digit=3, n=16)
    assert (spec.model, spec.weights_sha256, spec.sampler, spec.steps) == ("mnist", "cd" * 32, "ddpm", 1000)
    assert spec.guidance == 0.5 and spec.digit == 3 and spec.n == 16 and 0 <= spec.seed < 2**31
    assert resolve(sampler="ddim").steps == 50  # the default DDIM step count, written down
    assert resolve(sampler="uni_pc").steps == resolve(sampler="dpmpp_2m").steps == 8  # the solvers' default
    assert resolve(sampler="uni_pc", steps=5).steps == 5  # below DDIM's floor of 10: the solvers' own is 5
    floor = LIMITS.model_copy(update={"min_steps": 6})  # DDPM_MIN_STEPS: one floor for every sampler
    assert resolve_spec(GenerateRequest.model_validate({"sampler": "ddim", "steps": 6}), MODEL, floor).steps == 6
    with pytest.raises(FieldError, match="6 to 1000"):
        resolve_spec(GenerateRequest.model_validate({"sampler": "uni_pc", "steps": 5}), MODEL, floor)
    assert resolve(sampler="ddim", steps=12, guidance=0.0, seed=5).model_dump() == {
        **spec.model_dump(),
        "sampler": "ddim",
        "steps": 12,
        "guidance": 0.0,
        "seed": 5,
        "digit": None,
        "n": 16,
    }
    assert resolve(seed=1) != resolve(seed=2)
    assert resolve(**{"class": "3"}).digit == resolve(**{"class": 3}).digit == resolve(digit=3).digit == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"digit": 10}, "digit"),
        ({"class": 10}, "class"),
        ({"class": "ten"}, "class"),
        ({"class": 3, "digit": 4}, "class"),
        ({"redraw_mismatches": True}, "redraw_mismatches"),
        ({"sampler": "ddim", "steps": 1001}, "steps"),
        ({"sampler": "ddim", "steps": 9}, "steps"),
        ({"sampler": "uni_pc", "steps": 1001}, "steps"),
        ({"sampler": "ddpm", "steps": 999}, "steps"),
        ({"guidance": 10.5}, "guidance"),
        ({"n": 65}, "n"),
    ],
)
def test_a_request_outside_the_model_or_limits_names_its_field(fields: dict, field: str) -> None:
    with pytest.raises(FieldError) as caught:
        resolve(**fields)
    assert caught.value.field == field


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("api-models")
    make_tiny_checkpoint(directory / "mnist.safetensors")
    return directory


def app_client(redis_server: EmbeddedRedis, model_dir: Path, **overrides) -> Iterator[tuple[TestClient, Settings]]:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url, model_dir=model_dir, key_prefix=prefix, queue_name=prefix, **overrides
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings


@pytest.fixture()
def client(redis_server: EmbeddedRedis, model_dir: Path) -> Iterator[TestClient]:
    for client, _ in app_client(redis_server, model_dir):
        yield client


def test_post_stores_the_resolved_spec_and_get_shows_it(client: TestClient, redis_server: EmbeddedRedis) -> None:
    answer = client.post("/generate", json={"digit": 4, "n": 2, "sampler": "ddim", "steps": 12, "seed": 9})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert answer.headers["location"] == f"/jobs/{job_id}" and answer.json()["queue_position"] == 1
    settings = client.app.state.settings
    stored = redis.Redis.from_url(redis_server.url, decode_responses=True).hgetall(
        f"{settings.key_prefix}:job:{job_id}"
    )
    record = JobRecord.from_hash(job_id, stored)
    model = ModelRegistry(settings).get("mnist")
    assert record.spec.weights_sha256 == model.weights_sha256 and record.spec.steps == 12
    assert record.spec.guidance == 0.0  # the tiny model's own default, resolved at submission
    view = client.get(f"/jobs/{job_id}").json()
    assert view["params"] == record.spec.model_dump() and view["seed"] == 9 and view["queue_position"] == 1
    assert view["status"] == "queued" and view["progress"] == {"step": 0, "total": 12}


def test_limits_come_from_settings_in_validation_and_openapi(redis_server: EmbeddedRedis, model_dir: Path) -> None:
    overrides = {"max_n": 128, "max_pixels_per_job": 128 * 28 * 28, "max_points_per_job": 500, "max_guidance": 3.0}
    for client, settings in app_client(redis_server, model_dir, **overrides):
        schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]
        assert schema["n"]["maximum"] == 500  # the largest n any model may get: points here
        assert schema["guidance"]["anyOf"][0]["maximum"] == 3.0
        assert client.post("/generate", json={"n": 128, "sampler": "ddim"}).status_code == 202
        refused = client.post("/generate", json={"n": 129})  # within the schema, over the model's limit
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "n"
        assert "must be at most 128 for model 'mnist'" in refused.json()["message"]
        assert client.post("/generate", json={"n": 501}).status_code == 422
        assert client.post("/generate", json={"guidance": 3.5}).status_code == 422
        models = client.get("/models").json()
        assert models["limits"]["max_n"] == settings.max_n == 128 and models["models"][0]["n_limit"] == 128


def test_every_answer_has_a_schema_in_openapi(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                content = response.get("content", {})
                assert content, f"{method.upper()} {path} {code} has no content"
                if "application/json" in content:
                    assert content["application/json"]["schema"], f"{method.upper()} {path} {code}"
    schemas = spec["components"]["schemas"]
    assert {"JobView", "JobSpec", "ModelList", "ModelView", "Readiness", "ErrorBody", "CancelAnswer"} <= set(schemas)
    assert "KeyRequirements" in schemas and "CheckPlan" in schemas
    assert "path" not in schemas["ModelView"]["properties"]  # server paths are never shown
    models = client.get("/models").json()
    assert models["models"][0]["name"] == "mnist" and "path" not in models["models"][0]
