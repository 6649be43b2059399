"""The API's errors that need the real stack: a 422 through uvicorn (one smoke case; the
validation cases themselves run in-process in tests/api), a full queue, API keys and streams that
free their Redis connection, readiness that reflects Redis and the worker, and an API process
that never loads torch."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import redis

from serve.redis_server import EmbeddedRedis
from tests.service.conftest import service_env, start_api, stop_process


def test_a_422_travels_through_the_real_server(client: httpx.Client) -> None:
    """One smoke case each of a malformed body and a bad field, through uvicorn; every other
    validation case is answered in-process (tests/api/test_validation.py and its neighbours)."""
    malformed = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["message"].startswith("the request body is not valid JSON")
    response = client.post("/generate", json={"digit": 10})
    assert response.status_code == 422, response.text
    assert "digit" in response.json()["message"] and response.json()["detail"][0]["field"] == "digit"
    assert "Traceback" not in response.text


def test_models_health_docs_and_page(client: httpx.Client) -> None:
    models = client.get("/models").json()
    assert models["default"] == "mnist"
    (model,) = models["models"]
    assert model["class_names"] == [str(digit) for digit in range(10)]
    assert model["num_train_timesteps"] == 200 and model["sample_shape"] == [1, 28, 28]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1
    assert client.get("/docs").status_code == 200
    assert "/generate" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_full_queue_429_api_keys_and_streams_free_their_redis_connection(model_dir: Path) -> None:
    # an API with a queue of 2, API keys and no worker, on a Redis of its own
    server = EmbeddedRedis().start()
    env = service_env(server.url, model_dir, DDPM_MAX_QUEUE="2", DDPM_API_KEYS="k-one,k-two")
    process, base = start_api(env, "api-full.log")
    store = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            refused = http.post("/generate", json={"n": 1})
            assert refused.status_code == 401 and "API key" in refused.json()["message"]
            assert http.post("/generate", json={"n": 1}, headers={"x-api-key": "wrong"}).status_code == 401
            jobs = [
                http.post("/generate", json={"n": 1}, headers=headers).json()["id"]
                for headers in ({"x-api-key": "k-one"}, {"authorization": "Bearer k-two"})
            ]
            refused = http.post("/generate", json={"n": 1}, headers={"x-api-key": "k-one"})
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) > 0
            assert "queue is full" in refused.json()["message"]
            assert http.delete(f"/jobs/{jobs[0]}").status_code == 401
            ready = http.get("/readyz")  # no worker
            assert ready.status_code == 503 and "no worker" in ready.json()["reason"]

            # a stream of a queued job blocks on Redis; when its client leaves, the read ends
            before = blocked_clients(store)
            assert before == 0
            with http.stream("GET", f"/jobs/{jobs[1]}/events") as stream:
                # keep the line iterator referenced: a dropped httpx iterator closes the connection
                lines = stream.iter_lines()
                assert next(lines).startswith("id:")
                deadline = time.monotonic() + 20
                while blocked_clients(store) <= before:
                    assert time.monotonic() < deadline, f"the stream never blocked on Redis: {store.client_list()}"
                    time.sleep(0.1)
        deadline = time.monotonic() + 20
        while blocked_clients(store) > before:
            assert time.monotonic() < deadline, f"the stream kept its Redis connection: {store.client_list()}"
            time.sleep(0.2)
    finally:
        stop_process(process, "API")
        server.stop()


def blocked_clients(store: redis.Redis) -> int:
    return sum("b" in client["flags"] and client.get("cmd") == "xread" for client in store.client_list())


def test_readyz_is_503_when_redis_stops(model_dir: Path) -> None:
    server = EmbeddedRedis().start()
    process, base = start_api(service_env(server.url, model_dir), "api-redis-down.log")
    try:
        server.stop()
        response = httpx.get(f"{base}/readyz", timeout=15)
        assert response.status_code == 503
        assert "Redis is unreachable" in response.json()["reason"]
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        submitted = httpx.post(f"{base}/generate", json={"n": 1}, timeout=15)
        assert submitted.status_code == 503 and "Redis" in submitted.json()["message"]
    finally:
        stop_process(process, "API")
        server.stop()


def test_api_process_never_imports_torch(base_url: str, api: tuple[subprocess.Popen, str]) -> None:
    # the live API process, after serving requests, has no torch library mapped
    httpx.post(f"{base_url}/generate", json={"n": 1, "sampler": "ddim", "steps": 10}, timeout=10)
    httpx.get(f"{base_url}/models", timeout=10)
    maps = Path(f"/proc/{api[0].pid}/maps").read_text()
    assert "libtorch" not in maps and "uvicorn" in Path(f"/proc/{api[0].pid}/cmdline").read_text()
    # the import graph's rules (no torch under api/ or contract/) are checked in tests/test_structure.py
