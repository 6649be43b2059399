"""The OpenAI-compatible API in-process (FastAPI's TestClient, a real Redis, no worker): the model
list in OpenAI's shape, errors in OpenAI's shape with OpenAI's status codes, the images request's
extra fields validated as POST /generate validates them, and the schema in /openapi.json. The
official ``openai`` client against a real server with a worker: tests/service/test_openai.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from contract.settings import Settings
from serve.redis_server import EmbeddedRedis
from tests.api.test_metrics import scrape, series
from tests.service.conftest import make_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("openai-models")
    make_tiny_checkpoint(directory / "mnist.safetensors")
    import shutil

    shutil.copy(Path(__file__).resolve().parents[2] / "checkpoints" / "checkerboard.safetensors", directory)
    return directory


@pytest.fixture()
def client(redis_server: EmbeddedRedis, model_dir: Path) -> Iterator[TestClient]:
    prefix = f"o{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url, model_dir=model_dir, key_prefix=prefix, queue_name=prefix, api_keys="k1"
    )
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k1"}) as test_client:
        yield test_client


def error(answer) -> dict:  # noqa: ANN001
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_models_are_listed_in_openais_shape(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert {model["id"] for model in listed["data"]} == {"mnist", "checkerboard"}
    assert all(m["object"] == "model" and m["owned_by"] == "ddpm-service" and m["created"] > 0 for m in listed["data"])
    assert client.get("/v1/models/mnist").json()["id"] == "mnist"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert error(missing) == {
        "message": "unknown model 'nope'; available: checkerboard, mnist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"prompt": "eleven"}, 400, "prompt", "unknown class 'eleven'"),
        ({"prompt": "3", "size": "1024x1024"}, 400, "size", "draws 28x28 images"),
        ({"prompt": "3", "n": 65}, 400, "n", "at most 64"),
        ({"prompt": "3", "sampler": "euler"}, 400, "sampler", "ddpm"),
        ({"prompt": "3", "sampler": "ddim", "steps": 5000}, 400, "steps", "10 to 200 steps"),
        ({"prompt": "3", "guidance": -1}, 400, "guidance", "greater than or equal to 0"),
        ({"prompt": "3", "response_format": "png"}, 400, "response_format", "url"),
        ({"prompt": "3", "quality": "hd"}, 400, "quality", "not permitted"),
        ({"prompt": ""}, 400, "prompt", "at least 1 character"),
        ({"prompt": "3", "model": "checkerboard"}, 400, "model", "2-D points, not images"),
        ({"prompt": "3", "model": "dall-e-3"}, 404, "model", "unknown model 'dall-e-3'"),
    ],
)
def test_a_bad_images_request_gets_an_openai_error_naming_its_param(
    client: TestClient, body: dict, status: int, param: str, words: str
) -> None:
    answer = client.post("/v1/images/generations", json=body)
    assert answer.status_code == status, answer.text
    problem = error(answer)
    assert problem["param"] == param and words in problem["message"], problem
    assert problem["type"] == "invalid_request_error"


def test_keys_and_limits_answer_in_openais_shape(client: TestClient, redis_server: EmbeddedRedis) -> None:
    unauthorized = client.post("/v1/images/generations", json={"prompt": "3"}, headers={"Authorization": "Bearer no"})
    assert unauthorized.status_code == 401 and error(unauthorized)["code"] == "invalid_api_key"
    too_large = client.post(
        "/v1/images/generations", content=b"{" + b" " * 20_000 + b"}", headers={"content-type": "application/json"}
    )
    assert too_large.status_code == 413 and error(too_large)["code"] == "too_large"
    unknown = client.get("/v1/chat/completions")
    assert unknown.status_code == 404 and error(unknown)["type"] == "invalid_request_error"
    counts = {dict(labels)["reason"]: n for labels, n in series(scrape(client), "ddpm_jobs_rejected_total").items()}
    assert counts["unauthorized"] == 1 and counts["too_large"] == 1  # the images endpoint's refusals count too


def test_the_images_request_is_in_openapi_with_the_generate_requests_fields(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    images, generate = schemas["ImagesRequest"]["properties"], schemas["GenerateRequest"]["properties"]
    for shared in ("sampler", "steps", "guidance", "seed"):
        assert images[shared] == generate[shared], shared  # one definition, both endpoints
    assert images["response_format"]["enum"] == ["url", "b64_json"]
    operation = spec["paths"]["/v1/images/generations"]["post"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ImagesResponse")
    assert operation["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("OpenAIError")
    assert spec["paths"]["/jobs/{job_id}/images/{index}"]["get"]["responses"]["200"]["content"] == {"image/png": {}}
