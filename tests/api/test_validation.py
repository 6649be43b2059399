"""Bad requests, in-process (FastAPI's TestClient, a real Redis, no worker): a bad field gets a 422
naming it, a malformed body a 422, an unknown job a 404, no bad input a 5xx (the TestClient raises
any server error), and a model directory's foreign or crafted files are never offered.

These cases moved here from tests/service, which keeps one smoke case of a 422 through the real
server (tests/service/test_api_errors.py)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from serve.redis_server import EmbeddedRedis
from tests.api.test_requests import app_client, model_dir  # noqa: F401  (fixture)


@pytest.fixture()
def client(redis_server: EmbeddedRedis, model_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    for client, _ in app_client(redis_server, model_dir):
        yield client


@pytest.fixture()
def own_model_dir(model_dir: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A model directory of this test's own, with the tiny ``mnist`` model: files a test writes
    into it are seen by no other test."""
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copyfile(model_dir / "mnist.safetensors", directory / "mnist.safetensors")
    return directory


# the tiny model of tests/service/conftest.py: 10 classes, 200 diffusion steps; the default limits
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"digit": -1}, "digit"),
        ({"digit": "3"}, "digit"),
        ({"digit": 2.5}, "digit"),
        ({"n": 0}, "n"),
        ({"n": "16"}, "n"),
        ({"n": True}, "n"),
        ({"sampler": "euler"}, "sampler"),
        ({"sampler": "ddim", "steps": 9}, "steps"),
        ({"sampler": "ddim", "steps": "fifty"}, "steps"),
        ({"guidance": -0.5}, "guidance"),
        ({"guidance": "high"}, "guidance"),
        ({"seed": -1}, "seed"),
        ({"seed": "abc"}, "seed"),
        ({"model": "nope"}, "model"),
        ({"model": 5}, "model"),
    ],
)
def test_bad_field_gets_422_naming_it(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/generate", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert field in payload["message"]
    assert any(item["field"] == field for item in payload["detail"])
    assert "Traceback" not in response.text


def test_a_seed_whose_samples_would_wrap_is_refused(client: TestClient) -> None:
    """Sample i uses seed + i: seed 2**63 - 1 with n = 4 ran samples seeded 2**63 - 1, 0, 1, 2."""
    for path, body in (("/generate", {"n": 4}), ("/v1/images/generations", {"n": 4, "prompt": "3"})):
        answer = client.post(path, json={**body, "sampler": "ddim", "seed": 2**63 - 1})
        assert answer.status_code in (400, 422), answer.text
        message = answer.json()["error"]["message"] if path.startswith("/v1/") else answer.json()["message"]
        assert "the largest allowed seed for n=4 is 9223372036854775804" in message, message
    assert client.post("/generate", json={"n": 4, "sampler": "ddim", "seed": 2**63 - 4}).status_code == 202
    redraws = {"n": 4, "digit": 3, "redraw_mismatches": True, "sampler": "ddim", "seed": 2**63 - 4}
    message = client.post("/generate", json=redraws).json()["message"]
    assert "largest allowed seed for n=4 and 2 redraw rounds is 9223372036854775796" in message


def test_unknown_model_message_lists_the_available_ones(client: TestClient) -> None:
    payload = client.post("/generate", json={"model": "cifar"}).json()
    assert "unknown model 'cifar'" in payload["message"] and "mnist" in payload["message"]


@pytest.mark.parametrize("content", [b"[1, 2]", b""])
def test_a_body_of_the_wrong_shape_gets_422(client: TestClient, content: bytes) -> None:
    response = client.post("/generate", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["message"].startswith("invalid request")


@pytest.mark.parametrize("path", ["/generate", "/v1/images/generations"])
def test_a_body_that_is_no_json_says_so(client: TestClient, path: str) -> None:
    """Not "Input should be a valid dictionary" (text/plain), nor a character offset shown as a
    field name (malformed JSON): what is wrong with the body, in the path's error shape."""
    openai = path.startswith("/v1/")

    def message(answer: httpx.Response) -> str:
        assert "Traceback" not in answer.text
        return answer.json()["error"]["message"] if openai else answer.json()["message"]

    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        answer = client.post(path, content=b'{"digit": 3, "prompt": "3"}', headers=headers)
        assert answer.status_code == 415, answer.text
        assert "application/json" in message(answer) and "valid dictionary" not in message(answer)
    answer = client.post(path, content=b'{"digit": 3,,}', headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert message(answer).startswith("the request body is not valid JSON: ")
    assert "at line 1, column 13 (offset 12)" in message(answer)
    if openai:
        assert answer.json()["error"]["param"] is None
    else:
        assert answer.json()["detail"] is None  # no character offset shown as a field
    answer = client.post(path, content=b'{\n  "digit": 3\n  "n": 2}', headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "at line 3, column 3 " in message(answer), answer.text
    # JSON with a charset or a +json type is JSON
    answer = client.post(path, content=b'{"digit": 99}', headers={"content-type": "application/json; charset=utf-8"})
    assert answer.status_code in (400, 422) and "digit" in answer.text


@pytest.mark.parametrize("path", ["/jobs/{}", "/jobs/{}/png", "/jobs/{}/gif", "/jobs/{}/events"])
def test_unknown_job_is_404(client: TestClient, path: str) -> None:
    for job_id in ("0" * 32, "not-a-job"):
        response = client.get(path.format(job_id))
        assert response.status_code == 404
        assert "no job" in response.json()["message"]
    assert client.delete("/jobs/" + "0" * 32).status_code == 404


BAD_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b'{"n": "16"}',
    b'{"n": 1e400}',
    b'{"n": 0}',
    b'{"digit": -1}',
    b'{"digit": 3.5}',
    b'{"guidance": NaN}',
    b'{"guidance": "Infinity"}',
    b'{"seed": 9223372036854775808}',
    b'{"sampler": "euler"}',
    b'{"sampler": "ddim", "steps": 100000}',
    b'{"sampler": "ddpm", "steps": 1}',
    b'{"model": ""}',
    b'{"model": "../../etc/passwd"}',
    b'{"unexpected": 1}',
    '{"model": "\u00e9\u0000"}'.encode(),
    b"\xff\xfe\x00",
]
BAD_EVENT_IDS = ["99999999999999999999999-0", "null", "-1-0", "1-", "x" * 5000, "0-0\r\nX: y"]


def test_malformed_requests_get_4xx_never_5xx(client: TestClient) -> None:
    statuses = []
    for body in BAD_BODIES:
        answer = client.post("/generate", content=body, headers={"content-type": "application/json"})
        statuses.append(answer.status_code)
        assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
        assert "Traceback" not in answer.text and "message" in answer.json()
    job_id = client.post("/generate", json={"n": 1, "sampler": "ddim", "steps": 10}).json()["id"]
    for event_id in BAD_EVENT_IDS:
        try:
            answer = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": event_id})
        except httpx.LocalProtocolError:
            continue  # the client itself refuses to send such a header
        statuses.append(answer.status_code)
        assert answer.status_code == 400, (event_id, answer.text)
    for path in ("/jobs/../../etc/passwd", "/jobs/" + "a" * 5000, "/jobs/%00", "/jobs/abc/png"):
        assert client.get(path).status_code in (404, 422)
    assert all(status < 500 for status in statuses)


def test_a_foreign_safetensors_file_is_not_offered(redis_server: EmbeddedRedis, own_model_dir: Path) -> None:
    header = json.dumps({"__metadata__": {"format": "someone-else"}}).encode()
    (own_model_dir / "classifier.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    for client, _ in app_client(redis_server, own_model_dir):
        assert [model["name"] for model in client.get("/models").json()["models"]] == ["mnist"]
        response = client.post("/generate", json={"model": "classifier"})
        assert response.status_code == 422
        assert "not a ddpm-service checkpoint" in response.json()["message"]
        unknown = client.post("/generate", json={"model": "nope"}).json()["message"]
        assert unknown.endswith("available: mnist") and "classifier" not in unknown
        assert str(own_model_dir) not in unknown  # no server paths in answers


def crafted_checkpoint(path: Path) -> Path:
    """Valid project metadata for a huge U-Net, and no tensors at all."""
    config = {"base_channels": 4096, "channel_mult": [1, 2, 4], "num_res_blocks": 8, "num_classes": 10}
    metadata = {
        "format": "ddpm-service.checkpoint",
        "format_version": "1",
        "model_kind": "unet",
        "model_config": json.dumps(config),
        "schedule": json.dumps({"kind": "linear", "num_train_timesteps": 1000}),
        "class_names": json.dumps([str(digit) for digit in range(10)]),
        "sample_shape": json.dumps([1, 28, 28]),
        "dataset": "mnist",
        "training": "{}",
    }
    header = json.dumps({"__metadata__": metadata}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.mark.timeout(120)
def test_a_crafted_checkpoint_is_never_offered_or_run(redis_server: EmbeddedRedis, own_model_dir: Path) -> None:
    crafted_checkpoint(own_model_dir / "huge.safetensors")
    for client, _ in app_client(redis_server, own_model_dir):
        assert "huge" not in [model["name"] for model in client.get("/models").json()["models"]]
        answer = client.post("/generate", json={"model": "huge", "n": 1})
        assert answer.status_code == 422 and "not usable" in answer.json()["message"]
        assert str(own_model_dir) not in answer.text


def test_openapi_describes_redrawing_and_the_check(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["GenerateRequest"]["properties"]["redraw_mismatches"]["type"] == "boolean"
    assert "DigitCheck" in str(schemas["JobView"]["properties"]["check"])
    assert {"digit", "confidence", "seed", "matches", "redrawn"} <= set(schemas["SampleCheck"]["properties"])
