"""The submit path's controls in-process (FastAPI's TestClient, a real Redis, no worker): rate
limits (DDPM_RATE_LIMIT, shared by replicas, per API key, told apart from a full queue in the
answer and the metrics) and Idempotency-Key (the first answer again, one job for concurrent
duplicates, 422 for another body, scoped per API key, kept for DDPM_IDEMPOTENCY_TTL_S)."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from api.app import create_app
from contract.settings import Settings
from serve.redis_server import EmbeddedRedis
from tests.api.test_metrics import scrape, series
from tests.api.test_requests import model_dir  # noqa: F401  (fixture)

BODY = {"n": 1, "sampler": "ddim", "steps": 10}


def settings_for(redis_server: EmbeddedRedis, model_dir: Path, prefix: str | None = None, **overrides) -> Settings:  # noqa: F811
    prefix = prefix or f"s{uuid.uuid4().hex[:8]}"
    return Settings(redis_url=redis_server.url, model_dir=model_dir, key_prefix=prefix, queue_name=prefix, **overrides)


def rejected(client: TestClient) -> dict[str, float]:
    return {
        dict(labels)["reason"]: value for labels, value in series(scrape(client), "ddpm_jobs_rejected_total").items()
    }


def jobs_in_redis(redis_server: EmbeddedRedis, prefix: str) -> int:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    return sum(1 for _ in client.scan_iter(f"{prefix}:job:*"))


def test_eight_quick_posts_at_five_a_minute_give_five_jobs_and_three_429s(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
) -> None:
    settings = settings_for(redis_server, model_dir, rate_limit="5/minute")
    with TestClient(create_app(settings)) as client:
        answers = [client.post("/generate", json=BODY) for _ in range(8)]
        assert [answer.status_code for answer in answers] == [202] * 5 + [429] * 3
        for answer in answers[5:]:
            assert answer.json()["reason"] == "rate_limited" and "5 jobs per minute" in answer.json()["message"]
            assert 50 <= int(answer.headers["retry-after"]) <= 60
            assert answer.headers["ratelimit-policy"] == '"5-per-minute";q=5;w=60'
            assert re.fullmatch(r'"5-per-minute";r=0;t=\d+', answer.headers["ratelimit"])
        assert answers[0].headers["ratelimit"].startswith('"5-per-minute";r=4;')
        assert answers[4].headers["ratelimit"].startswith('"5-per-minute";r=0;')
        counts = rejected(client)
        assert counts["rate_limited"] == 3 and counts["queue_full"] == 0, counts
    assert jobs_in_redis(redis_server, settings.key_prefix) == 5


def test_a_full_queue_is_told_apart_from_a_rate_limit(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    settings = settings_for(redis_server, model_dir, rate_limit="100/minute", max_queue=1)
    with TestClient(create_app(settings)) as client:
        assert client.post("/generate", json=BODY).status_code == 202
        full = client.post("/generate", json=BODY)
        assert full.status_code == 429 and full.json()["reason"] == "queue_full"
        assert "queue is full" in full.json()["message"] and full.headers["retry-after"] == "30"
        assert full.headers["ratelimit"].startswith('"100-per-minute";r=98;')  # the client's own quota is not used up
        counts = rejected(client)
        assert counts["queue_full"] == 1 and counts["rate_limited"] == 0, counts


def test_the_limit_is_per_api_key_and_shared_by_replicas(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    settings = settings_for(redis_server, model_dir, rate_limit="3/hour;100/day", api_keys="k1,k2")
    replicas = [create_app(settings), create_app(settings)]  # two API processes over one Redis
    with TestClient(replicas[0]) as first, TestClient(replicas[1]) as second:
        k1, k2 = {"Authorization": "Bearer k1"}, {"X-API-Key": "k2"}
        codes = [client.post("/generate", json=BODY, headers=k1).status_code for client in (first, second) * 2]
        assert codes == [202, 202, 202, 429]  # one count across the replicas
        assert second.post("/generate", json=BODY, headers=k2).status_code == 202  # another key: its own count
        policy = first.post("/generate", json=BODY, headers=k2).headers["ratelimit-policy"]
        assert policy == '"3-per-hour";q=3;w=3600, "100-per-day";q=100;w=86400'
        assert first.post("/generate", json=BODY, headers={"X-API-Key": "wrong"}).status_code == 401


def test_an_unlimited_service_sends_no_rate_limit_fields(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    with TestClient(create_app(settings_for(redis_server, model_dir))) as client:
        answer = client.post("/generate", json=BODY)
        assert answer.status_code == 202 and "ratelimit" not in answer.headers


def test_an_idempotency_key_gives_the_first_answer_again(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    settings = settings_for(redis_server, model_dir, rate_limit="2/minute", idempotency_ttl_s=120)
    with TestClient(create_app(settings)) as client:
        key = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}  # the draft's quoted form
        first = client.post("/generate", json=BODY, headers=key)
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        for _ in range(3):  # replays are not counted against the rate limit (2 a minute)
            again = client.post("/generate", json={"steps": 10, "sampler": "ddim", "n": 1}, headers=key)
            assert again.status_code == 202 and again.json() == first.json()
            assert (
                again.headers["location"] == first.headers["location"]
                and again.headers["idempotent-replayed"] == "true"
            )
        other = client.post("/generate", json={**BODY, "seed": 1}, headers=key)
        assert other.status_code == 422 and other.json()["reason"] == "idempotency_mismatch"
        assert "different request" in other.json()["message"]
        # the same key on the other endpoint that creates jobs is another request too
        images = client.post("/v1/images/generations", json={"prompt": "3"}, headers=key)
        assert images.status_code == 422 and images.json()["error"]["code"] == "idempotency_mismatch"
        assert client.post("/generate", json=BODY, headers={"Idempotency-Key": "k2"}).status_code == 202
        assert client.post("/generate", json=BODY).status_code == 429  # the two counted submissions were made
        assert client.post("/generate", json=BODY, headers={"Idempotency-Key": ""}).status_code == 400
        stored = redis.Redis.from_url(redis_server.url, decode_responses=True)
        records = list(stored.scan_iter(f"{settings.key_prefix}:idempotency:*"))
        assert len(records) == 2 and not any("8e03978e" in record for record in records)  # digests only
        assert all(100 < stored.ttl(record) <= 120 for record in records)  # kept for DDPM_IDEMPOTENCY_TTL_S
        assert rejected(client)["idempotency_mismatch"] == 2
    assert jobs_in_redis(redis_server, settings.key_prefix) == 2


def test_keys_are_scoped_per_api_key(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    settings = settings_for(redis_server, model_dir, api_keys="k1,k2")
    with TestClient(create_app(settings)) as client:
        same = {"Idempotency-Key": "order-1"}
        one = client.post("/generate", json=BODY, headers={**same, "X-API-Key": "k1"}).json()["id"]
        two = client.post("/generate", json=BODY, headers={**same, "X-API-Key": "k2"}).json()["id"]
        again = client.post("/generate", json=BODY, headers={**same, "Authorization": "Bearer k1"}).json()["id"]
        assert one != two and again == one


def test_ten_concurrent_identical_posts_make_one_job(redis_server: EmbeddedRedis, model_dir: Path) -> None:  # noqa: F811
    settings = settings_for(redis_server, model_dir)
    with TestClient(create_app(settings)) as client:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: client.post("/generate", json=BODY, headers=headers), range(10)))
        assert {answer.status_code for answer in answers} == {202}
        assert len({answer.json()["id"] for answer in answers}) == 1
        assert sum(answer.headers.get("idempotent-replayed") == "true" for answer in answers) == 9
    assert jobs_in_redis(redis_server, settings.key_prefix) == 1


def test_openapi_declares_the_idempotency_key_and_the_refusal_reasons(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
) -> None:
    with TestClient(create_app(settings_for(redis_server, model_dir))) as client:
        spec = client.get("/openapi.json").json()
        for path in ("/generate", "/v1/images/generations"):
            parameters = {p["name"]: p for p in spec["paths"][path]["post"]["parameters"]}
            assert parameters["Idempotency-Key"]["in"] == "header" and "422" in spec["paths"][path]["post"]["responses"]
        reasons = spec["components"]["schemas"]["Refusal"]["enum"]
        assert {"queue_full", "rate_limited", "idempotency_mismatch", "webhook_refused"} <= set(reasons)
