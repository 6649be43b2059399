"""Webhooks in-process (the app under FastAPI's TestClient with its dispatcher running, a real
Redis, real HTTP receivers on 127.0.0.1; jobs end through the worker's own job store or a
cancel): every delivery verified by the ``standardwebhooks`` package, retries with backoff until
a failing receiver answers, the state in ``GET /jobs/{id}``, and refused URLs never contacted
(loopback without an allow-list, file:, private and metadata addresses, a redirect to a listener,
a name that resolves elsewhere at send time)."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from api.app import create_app
from api.webhooks import guard
from api.webhooks.dispatcher import retry_delay
from contract.settings import Settings
from serve.redis_server import EmbeddedRedis
from tests.api.test_metrics import scrape, value
from tests.api.test_requests import model_dir  # noqa: F401  (fixture)
from tests.receivers import Delivery, Receiver
from worker.store import JobStore

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
BODY = {"n": 1, "sampler": "ddim", "steps": 10}
FAST = {  # retries within a test's time
    "webhook_secret": SECRET,
    "webhook_backoff_s": 0.15,
    "webhook_backoff_max_s": 1.0,
    "webhook_poll_s": 0.03,
    "webhook_timeout_s": 1.0,
}


def app_for(redis_server: EmbeddedRedis, model_dir: Path, **overrides) -> tuple[TestClient, Settings]:  # noqa: F811
    prefix = f"w{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url, model_dir=model_dir, key_prefix=prefix, queue_name=prefix, **{**FAST, **overrides}
    )
    return TestClient(create_app(settings)), settings


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver() as listening:
        yield listening


@pytest.fixture()
def listener() -> Iterator[Receiver]:
    """A listener that must never be contacted."""
    with Receiver() as listening:
        yield listening


def verified(delivery: Delivery) -> dict:
    """The delivery's payload, its signature checked by the Standard Webhooks library."""
    return Webhook(SECRET).verify(delivery.body, delivery.headers)


def wait_state(client: TestClient, job_id: str, states: set[str], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        webhook = client.get(f"/jobs/{job_id}").json()["webhook"]
        if webhook["state"] in states:
            return webhook
        time.sleep(0.05)
    raise AssertionError(f"webhook of {job_id} still {webhook}")


def test_a_receiver_that_fails_twice_gets_the_same_signed_delivery_a_third_time(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
    receiver: Receiver,
) -> None:
    receiver.script = [500, 503, 200]
    client, settings = app_for(redis_server, model_dir, webhook_allowed_hosts="127.0.0.1")
    with client:
        job_id = client.post("/generate", json={**BODY, "webhook_url": receiver.url}).json()["id"]
        assert client.get(f"/jobs/{job_id}").json()["webhook"] == {
            "url": receiver.url,
            "state": "waiting",
            "id": None,
            "event": None,
            "attempts": 0,
            "last_status": None,
            "last_error": None,
            "last_attempt_at": None,
            "next_attempt_at": None,
            "delivered_at": None,
        }
        worker = JobStore(settings)
        worker.claim(job_id, "w1")
        assert worker.succeed(job_id, b"png", b"gif", 1.5)
        deliveries = receiver.wait_for(3)
        webhook = wait_state(client, job_id, {"delivered"})
        payloads = [verified(delivery) for delivery in deliveries]  # each signature checks out
        assert payloads[0] == payloads[1] == payloads[2]
        assert {d.headers["webhook-id"] for d in deliveries} == {f"msg_{job_id}"}
        assert len({d.body for d in deliveries}) == 1  # the same bytes, re-signed at each attempt
        payload = payloads[0]
        assert payload["type"] == "job.succeeded" and payload["timestamp"].endswith("Z")
        assert payload["data"]["id"] == job_id and payload["data"]["status"] == "succeeded"
        assert payload["data"]["params"]["steps"] == 10 and "webhook" not in payload["data"]
        gaps = [later.at - earlier.at for earlier, later in zip(deliveries, deliveries[1:], strict=False)]
        assert 0.05 <= gaps[0] <= 0.6 and 0.12 <= gaps[1] <= 0.9, gaps  # up to 0.15 s, then 0.3 s, jittered
        assert webhook["attempts"] == 3 and webhook["last_status"] == 200 and webhook["id"] == f"msg_{job_id}"
        assert webhook["event"] == "job.succeeded" and webhook["delivered_at"] and webhook["next_attempt_at"] is None
        time.sleep(0.3)
        assert len(receiver.deliveries) == 3  # delivered: never again
        samples = scrape(client)
        assert value(samples, "ddpm_webhook_attempts_total") == 3
        assert value(samples, "ddpm_webhook_failed_attempts_total") == 2
        assert value(samples, "ddpm_webhook_delivered_total") == 1 and value(samples, "ddpm_webhooks_pending") == 0


def test_failed_and_cancelled_jobs_are_announced_too(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
    receiver: Receiver,
) -> None:
    client, settings = app_for(redis_server, model_dir, webhook_allowed_hosts="127.0.0.1/8,::1")
    with client:
        failed, cancelled, plain = (
            client.post("/generate", json={**BODY, "webhook_url": receiver.url}).json()["id"] for _ in range(3)
        )
        JobStore(settings).fail(failed, "the model's weights changed")
        assert client.delete(f"/jobs/{cancelled}").json()["status"] == "cancelled"  # ended by the API itself
        by_type = {verified(d)["type"]: verified(d) for d in receiver.wait_for(2)}
        assert by_type["job.failed"]["data"]["error"] == "the model's weights changed"
        assert by_type["job.cancelled"]["data"]["id"] == cancelled
        time.sleep(0.3)
        assert len(receiver.deliveries) == 2  # the queued job has not ended: nothing sent for it
        assert client.get(f"/jobs/{plain}").json()["webhook"]["state"] == "waiting"


def test_refused_urls_are_never_contacted(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
    listener: Receiver,
) -> None:
    client, _ = app_for(redis_server, model_dir)  # no allow-list: loopback is refused
    with client:
        port = listener.port
        refused = {
            f"http://127.0.0.1:{port}/hook": "127.0.0.1 is a loopback address",
            f"http://localhost:{port}/hook": "a loopback address",
            f"http://[::ffff:127.0.0.1]:{port}/hook": "a loopback address",
            "file:///etc/passwd": "only http and https",
            "gopher://127.0.0.1/": "only http and https",
            "http://10.20.30.40/hook": "a private address",
            "http://169.254.169.254/latest/meta-data/": "cloud-metadata",
            "http://0.0.0.0/": "address",
            f"http://user:pw@127.0.0.1:{port}/": "user name or password",
        }
        for url, why in refused.items():
            answer = client.post("/generate", json={**BODY, "webhook_url": url})
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["reason"] == "webhook_refused" and why in answer.json()["message"], answer.json()
            assert answer.json()["message"].startswith("refused:")
    client, _ = app_for(redis_server, model_dir, webhook_secret="")
    with client:
        answer = client.post("/generate", json={**BODY, "webhook_url": "https://hooks.example.com/x"})
        assert answer.status_code == 422 and "DDPM_WEBHOOK_SECRET" in answer.json()["message"]
    time.sleep(0.2)
    assert listener.connections == 0


def test_a_redirect_is_not_followed_and_a_slow_or_large_answer_is_cut(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
    receiver: Receiver,
    listener: Receiver,
) -> None:
    receiver.script = [("redirect", listener.url), ("sleep", 1.0), ("big", 4_000_000)]
    client, settings = app_for(
        redis_server, model_dir, webhook_allowed_hosts="127.0.0.1", webhook_retry_for_s=1.2, webhook_timeout_s=0.25
    )
    with client:
        job_id = client.post("/generate", json={**BODY, "webhook_url": receiver.url}).json()["id"]
        client.delete(f"/jobs/{job_id}")
        webhook = wait_state(client, job_id, {"given_up"})
        assert webhook["attempts"] >= 3 and webhook["state"] == "given_up"
        statuses = scrape(client)
        assert value(statuses, "ddpm_webhook_given_up_total") == 1
    assert listener.connections == 0  # the redirect's target was never contacted
    assert len(receiver.deliveries) >= 3


def test_a_name_that_resolves_elsewhere_at_send_time_is_refused_then(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
    listener: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([["93.184.215.14"]])  # public when the job is submitted ...

    async def rebinding(host: str, port: int) -> list[str]:
        assert host == "hooks.example.test"
        return next(answers, ["127.0.0.1"])  # ... the listener's loopback address when it is sent

    monkeypatch.setattr(guard, "getaddrinfo", rebinding)
    client, _ = app_for(redis_server, model_dir)
    with client:
        url = f"http://hooks.example.test:{listener.port}/hook"
        job_id = client.post("/generate", json={**BODY, "webhook_url": url}).json()["id"]
        client.delete(f"/jobs/{job_id}")
        webhook = wait_state(client, job_id, {"given_up"})
        assert webhook["attempts"] == 1 and webhook["last_status"] is None
        assert webhook["last_error"].startswith("refused: hooks.example.test resolves to 127.0.0.1, a loopback")
    assert listener.connections == 0


def test_the_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    import random

    rng = random.Random(0)
    for attempts, ceiling in [(1, 5), (2, 10), (3, 20), (8, 600), (20, 600)]:
        delays = [retry_delay(attempts, 5, 600, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling and len(set(delays)) > 100


def test_a_delivery_is_pending_in_redis_not_in_the_process(
    redis_server: EmbeddedRedis,
    model_dir: Path,  # noqa: F811
    receiver: Receiver,
) -> None:
    """A delivery made while no API runs (the worker ended the job) is sent by the next API to start."""
    prefix = f"w{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url,
        model_dir=model_dir,
        key_prefix=prefix,
        queue_name=prefix,
        webhook_allowed_hosts="127.0.0.1",
        **FAST,
    )
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/generate", json={**BODY, "webhook_url": receiver.url}).json()["id"]
    JobStore(settings).fail(job_id, "stopped")  # no API process is running now
    time.sleep(0.3)
    assert receiver.deliveries == []
    with TestClient(create_app(settings)) as client:
        (delivery,) = receiver.wait_for(1)
        assert json.loads(delivery.body)["type"] == "job.failed" and verified(delivery)["data"]["id"] == job_id
        assert wait_state(client, job_id, {"delivered"})["attempts"] == 1
