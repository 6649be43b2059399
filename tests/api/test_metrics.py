"""``GET /metrics`` in-process (FastAPI's TestClient, a real Redis, no worker): the Prometheus
text parses with prometheus_client's own parser; submissions, rejections by reason and
cancellations each count once; histogram counts match the finished jobs; reads protected by
API keys protect the metrics too."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from contract.settings import Settings
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import REPO, make_tiny_checkpoint

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("metrics-models")
    make_tiny_checkpoint(directory / "mnist.safetensors")
    return directory


def parse(text: str) -> Samples:
    """Every sample of a Prometheus exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: number for (sample, labels), number in samples.items() if sample == name}


def check_histograms(samples: Samples) -> None:
    """Bucket counts rise with ``le`` and end at ``_count``, for every histogram series."""
    buckets: dict[tuple[str, frozenset], list[tuple[float, float]]] = {}
    for (name, labels), number in samples.items():
        if name.endswith("_bucket"):
            rest = frozenset(item for item in labels if item[0] != "le")
            buckets.setdefault((name[: -len("_bucket")], rest), []).append((float(dict(labels)["le"]), number))
    assert buckets, "no histogram"
    for (name, labels), points in buckets.items():
        counts = [count for _, count in sorted(points)]
        assert counts == sorted(counts), f"{name} {dict(labels)} buckets fall"
        assert sorted(points)[-1][0] == float("inf") and counts[-1] == samples[(f"{name}_count", labels)]


def finished_jobs(samples: Samples) -> float:
    return sum(value(samples, f"ddpm_jobs_{status}_total") for status in ("succeeded", "failed", "cancelled"))


def app_client(redis_server: EmbeddedRedis, model_dir: Path, **overrides) -> Iterator[TestClient]:
    prefix = f"m{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url, model_dir=model_dir, key_prefix=prefix, queue_name=prefix, **overrides
    )
    with TestClient(create_app(settings)) as client:
        yield client


def scrape(client: TestClient, **headers: str) -> Samples:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def test_submissions_rejections_and_cancellations_each_count_once(
    redis_server: EmbeddedRedis,
    model_dir: Path,
) -> None:
    for client in app_client(redis_server, model_dir, max_queue=2):
        before = scrape(client)
        assert value(before, "ddpm_jobs_submitted_total") == 0 and value(before, "ddpm_queue_length") == 0
        assert value(before, "ddpm_workers_alive") == 0 and value(before, "ddpm_jobs_in_flight") == 0
        assert {dict(labels)["reason"] for labels in series(before, "ddpm_jobs_rejected_total")} >= {
            "queue_full",
            "invalid",
            "unauthorized",
            "too_large",
        }
        body = {"n": 1, "sampler": "ddim", "steps": 10}
        first = client.post("/generate", json=body)
        assert first.status_code == 202
        after = scrape(client)
        assert value(after, "ddpm_jobs_submitted_total") == 1 and value(after, "ddpm_queue_length") == 1

        assert client.post("/generate", json=body).status_code == 202
        assert client.post("/generate", json=body).status_code == 429  # the queue holds 2
        assert client.post("/generate", json={"n": 0}).status_code == 422
        assert client.post("/generate", json={"digit": 10}).status_code == 422  # outside the model: FieldError
        assert (
            client.post("/generate", content=b"x" * 20_000, headers={"content-type": "application/json"}).status_code
            == 413
        )
        after = scrape(client)
        rejected = {
            dict(labels)["reason"]: number for labels, number in series(after, "ddpm_jobs_rejected_total").items()
        }
        assert rejected["queue_full"] == 1 and rejected["invalid"] == 2 and rejected["too_large"] == 1
        assert rejected["unauthorized"] == 0
        assert value(after, "ddpm_jobs_submitted_total") == 2 and value(after, "ddpm_queue_length") == 2

        assert client.delete(f"/jobs/{first.json()['id']}").json()["status"] == "cancelled"
        assert client.delete(f"/jobs/{first.json()['id']}").status_code == 202  # again: no second count
        after = scrape(client)
        assert value(after, "ddpm_jobs_cancelled_total") == 1 and value(after, "ddpm_queue_length") == 1
        assert value(after, "ddpm_job_duration_seconds_count", status="cancelled") == 1
        assert value(after, "ddpm_job_duration_seconds_count", status="succeeded") == 0
        durations = series(after, "ddpm_job_duration_seconds_count")
        assert sum(durations.values()) == finished_jobs(after) == value(after, "ddpm_job_queue_wait_seconds_count")
        assert value(after, "ddpm_job_duration_seconds_bucket", status="cancelled", le="0.5") == 1  # just now
        check_histograms(after)


def test_metrics_need_a_key_when_reads_are_protected(redis_server: EmbeddedRedis, model_dir: Path) -> None:
    for client in app_client(redis_server, model_dir, api_keys="k1,k2", protect_reads=True):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/generate", json={"n": 1}).status_code == 401
        samples = scrape(client, Authorization="Bearer k2")  # as Prometheus sends it
        assert value(samples, "ddpm_jobs_rejected_total", reason="unauthorized") == 1
        assert scrape(client, **{"X-API-Key": "k1"})
    for client in app_client(redis_server, model_dir, api_keys="k1"):
        assert client.get("/metrics").status_code == 200  # reads are open unless DDPM_PROTECT_READS


def test_metrics_are_described_in_openapi(redis_server: EmbeddedRedis, model_dir: Path) -> None:
    for client in app_client(redis_server, model_dir):  # keyless: no 401 is declared
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert "text/plain" in operation["responses"]["200"]["content"]
        assert "503" in operation["responses"] and "401" not in operation["responses"]
    for client in app_client(redis_server, model_dir, api_keys="k1", protect_reads=True):
        operation = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert {"401", "503"} <= set(operation["responses"])  # reads need a key: the 401 is declared


def test_openmetrics_on_request_and_the_dashboard_queries_only_series_that_exist(
    redis_server: EmbeddedRedis, model_dir: Path
) -> None:
    for client in app_client(redis_server, model_dir):
        assert client.post("/generate", json={"n": 1, "sampler": "ddim"}).status_code == 202
        answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        families = {family.name: family for family in parse_openmetrics(answer.text)}  # the strict parser
        assert families["ddpm_jobs_submitted"].samples[0].value == 1
        assert families["ddpm_job_duration_seconds"].type == "histogram"
        exposed = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
        dashboard = json.loads((REPO / "docker" / "grafana-dashboard.json").read_text())
        queries = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
        used = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in re.findall(r"ddpm_\w+", queries)}
        assert used and used <= exposed, used - exposed
