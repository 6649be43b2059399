"""The API's defences, in-process against a real Redis: body limit, event ids, API keys for
writes and (optionally) reads, CORS, OPTIONS, offline docs and the documented error answers."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve.redis_server import EmbeddedRedis
from tests.api.test_requests import app_client, model_dir  # noqa: F401  (fixture)


@pytest.fixture()
def client(redis_server: EmbeddedRedis, model_dir: Path) -> Iterator[TestClient]:  # noqa: F811
    for client, _ in app_client(redis_server, model_dir, max_body_bytes=2048):
        yield client


def test_a_body_over_the_limit_is_refused_with_413(client: TestClient) -> None:
    big = b'{"n": 1, "pad": "' + b"x" * 5000 + b'"}'
    answer = client.post("/generate", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "limit of 2048 bytes" in answer.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"n": 1, "pad": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    answer = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert client.post("/generate", json={"n": 1, "sampler": "ddim"}).status_code == 202  # small bodies pass


@pytest.mark.parametrize("event_id", ["99999999999999999999999-0", "null", "abc", "1-2-3", "1-"])
def test_a_bad_or_out_of_range_last_event_id_is_400(client: TestClient, event_id: str) -> None:
    job_id = client.post("/generate", json={"n": 1, "sampler": "ddim"}).json()["id"]
    answer = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": event_id})
    assert answer.status_code == 400 and "Last-Event-ID" in answer.json()["message"]


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of an SSE body, each as its fields."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append(fields)
    return found


def test_a_client_reconnecting_after_the_end_learns_how_the_job_ended(client: TestClient) -> None:
    """At, or past, the terminal event's id: that event again, at once (it was an empty stream
    closed after 5 s)."""
    job_id = client.post("/generate", json={"n": 1, "sampler": "ddim"}).json()["id"]
    client.delete(f"/jobs/{job_id}")  # cancelled while queued: ended
    with client.stream("GET", f"/jobs/{job_id}/events") as whole:
        history = sse_events(whole.read().decode())
    assert [event["event"] for event in history][-1] == "cancelled"
    terminal = history[-1]
    for event_id in (terminal["id"], f"{2**64 - 1}-{2**64 - 1}"):
        started = time.monotonic()
        with client.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": event_id}) as again:
            assert again.status_code == 200
            events_again = sse_events(again.read().decode())
        assert time.monotonic() - started < 2, "the terminal event waited for the stream's idle read"
        assert events_again == [terminal], events_again
    # an earlier id still gets what followed it, once
    with client.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": history[0]["id"]}) as rest:
        assert sse_events(rest.read().decode()) == history[1:]


def model_enum(spec: dict, body: str) -> list[str]:
    """The names a request body's ``model`` may take, as OpenAPI declares them."""
    field = spec["components"]["schemas"][body]["properties"]["model"]
    return next(branch["enum"] for branch in field["anyOf"] if branch.get("type") == "string")


def test_openapi_declares_what_the_api_accepts(redis_server: EmbeddedRedis, model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """A request the schema allows is never refused for what the schema could say: the
    Last-Event-ID header's pattern (``null`` was allowed, then refused with 400) and the models on
    offer as ``model``'s enum (``"0"`` was allowed, then refused with 422), following the model
    directory."""
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copyfile(model_dir / "mnist.safetensors", directory / "mnist.safetensors")
    for client, _ in app_client(redis_server, directory):
        spec = client.get("/openapi.json").json()
        (header,) = [p for p in spec["paths"]["/jobs/{job_id}/events"]["get"]["parameters"] if p["in"] == "header"]
        assert header["name"] == "Last-Event-ID" and header["schema"]["type"] == "string"
        pattern = re.compile(header["schema"]["pattern"])
        assert not pattern.search("null") and not pattern.search("abc")
        job_id = client.post("/generate", json={"n": 1, "sampler": "ddim"}).json()["id"]
        client.delete(f"/jobs/{job_id}")  # ended: every stream below ends at once
        for event_id in ("0-0", "1-2", f"{2**64}-0", "9" * 20 + "-" + "9" * 20):  # schema-valid ids
            assert pattern.search(event_id)
            with client.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": event_id}) as answer:
                assert answer.status_code == 200, event_id
                assert "event: cancelled" in answer.read().decode()

        assert model_enum(spec, "GenerateRequest") == model_enum(spec, "ImagesRequest") == ["mnist"]
        assert client.post("/generate", json={"model": "mnist", "n": 1, "sampler": "ddim"}).status_code == 202
        # a model added (or removed) is in (or out of) the schema at once
        shutil.copyfile(directory / "mnist.safetensors", directory / "digits.safetensors")
        spec = client.get("/openapi.json").json()
        assert model_enum(spec, "GenerateRequest") == ["digits", "mnist"]
        assert client.post("/generate", json={"model": "digits", "n": 1, "sampler": "ddim"}).status_code == 202
        (directory / "digits.safetensors").unlink()
        spec = client.get("/openapi.json").json()
        assert model_enum(spec, "GenerateRequest") == ["mnist"]


def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "cdn." not in page and "https://" not in page.split("<body>")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert asset in page
        path = page.split(asset)[0].rsplit('"', 1)[1] + asset
        assert client.get(path).status_code == 200, path


def secured(spec: dict) -> dict[str, list[str]]:
    """``METHOD path`` -> the security schemes its operation declares (operations with any)."""
    return {
        f"{method.upper()} {path}": sorted(name for requirement in operation["security"] for name in requirement)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "security" in operation
    }


def test_openapi_of_a_keyless_service_declares_no_security(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec["components"] and secured(spec) == {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "401" not in operation["responses"], f"{method.upper()} {path}"  # never answered
    post = spec["paths"]["/generate"]["post"]
    assert {"400", "413", "422", "429"} <= set(post["responses"])
    assert client.get("/auth").json() == {"writes": False, "reads": False}


def test_openapi_declares_security_where_a_key_is_enforced(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    writes = ["APIKeyHeader", "HTTPBearer"]
    for client, _ in app_client(redis_server, model_dir, api_keys="k1"):
        spec = client.get("/openapi.json").json()
        assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
        assert set(spec["components"]["securitySchemes"]) == set(writes)  # reads are open: no query scheme
        assert secured(spec) == {
            "POST /generate": writes,
            "POST /v1/images/generations": writes,
            "DELETE /jobs/{job_id}": writes,
        }
        assert {"401", "422", "429"} <= set(spec["paths"]["/generate"]["post"]["responses"])
        assert {"401", "404"} <= set(spec["paths"]["/jobs/{job_id}"]["delete"]["responses"])
        assert "401" not in spec["paths"]["/jobs/{job_id}"]["get"]["responses"]
        assert client.get("/auth").json() == {"writes": True, "reads": False}
    for client, _ in app_client(redis_server, model_dir, api_keys="k1", protect_reads=True):
        spec = client.get("/openapi.json").json()
        reads = ["APIKeyHeader", "APIKeyQuery", "HTTPBearer"]
        for path in ("/jobs/{job_id}", "/jobs/{job_id}/png", "/jobs/{job_id}/gif", "/jobs/{job_id}/events"):
            assert secured(spec)[f"GET {path}"] == reads and "401" in spec["paths"][path]["get"]["responses"]
        assert "GET /models" not in secured(spec) and "GET /auth" not in secured(spec)  # the catalogue is public
        assert client.get("/auth").json() == {"writes": True, "reads": True}


def test_options_lists_every_method_of_the_path(client: TestClient) -> None:
    answer = client.options("/jobs/0123456789abcdef0123456789abcdef")
    assert answer.status_code == 204
    assert {"GET", "DELETE", "OPTIONS"} <= {method.strip() for method in answer.headers["allow"].split(",")}


def test_ddpm_with_a_step_count_below_the_minimum_is_invalid_by_schema(client: TestClient) -> None:
    answer = client.post("/generate", json={"sampler": "ddpm", "steps": 1})
    assert answer.status_code == 422 and answer.json()["detail"][0]["field"] == "steps"


def test_keys_protect_writes_and_optionally_reads(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    for client, _ in app_client(redis_server, model_dir, api_keys="k1,k2", protect_reads=True):
        assert client.post("/generate", json={"n": 1}).status_code == 401
        job = client.post("/generate", json={"n": 1, "sampler": "ddim"}, headers={"X-API-Key": "k2"}).json()
        assert client.get(f"/jobs/{job['id']}").status_code == 401
        assert client.get(f"/jobs/{job['id']}", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert client.get(f"/jobs/{job['id']}?api_key=k1").status_code == 200
        assert client.get(f"/jobs/{job['id']}/png?api_key=nope").status_code == 401
        assert client.get("/models").status_code == 200  # the catalogue stays public
    for client, _ in app_client(redis_server, model_dir, api_keys="k1"):
        job = client.post("/generate", json={"n": 1, "sampler": "ddim"}, headers={"X-API-Key": "k1"}).json()
        assert client.get(f"/jobs/{job['id']}").status_code == 200  # reads open unless protected


def test_cors_is_off_by_default_and_allows_only_the_configured_origins(
    client: TestClient,
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
) -> None:
    preflight = {"Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/generate", headers=preflight).headers
    for other, _ in app_client(redis_server, model_dir, cors_origins="https://a.example"):
        assert (
            other.options("/generate", headers=preflight).headers["access-control-allow-origin"] == "https://a.example"
        )
        refused = other.options("/generate", headers={**preflight, "Origin": "https://b.example"})
        assert "access-control-allow-origin" not in refused.headers
