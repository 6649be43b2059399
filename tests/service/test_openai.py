"""The official ``openai`` Python client against the real service: an API process with API keys
(reads protected too) beside the check stack's worker (the SHIPPED ``mnist`` model and its
classifier, an untrained unconditional RGB ``sprites`` model; tests/service/conftest.py). The
client gets n images of the class it asked for, as the service's own per-class check reads them,
inline and as links; its errors come back as the client's typed exceptions."""

from __future__ import annotations

import base64
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from serve.command import stop_process
from serve.redis_server import EmbeddedRedis
from tests.service.conftest import CHECK_PREFIX, service_env, start_api

KEY = "openai-test-key"


@pytest.fixture(scope="module")
def base(redis_server: EmbeddedRedis, check_model_dir: Path, check_url: str) -> Iterator[str]:
    """An API with keys over the check stack's queue (its worker runs the jobs)."""
    env = service_env(
        redis_server.url,
        check_model_dir,
        DDPM_KEY_PREFIX=CHECK_PREFIX,
        DDPM_QUEUE_NAME=CHECK_PREFIX,
        DDPM_API_KEYS=KEY,
        DDPM_PROTECT_READS="true",
    )
    process: subprocess.Popen
    process, url = start_api(env, "api-openai.log")
    try:
        yield url
    finally:
        stop_process(process, "API")


@pytest.fixture()
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120) as sdk:
        yield sdk


def test_the_openai_client_gets_n_images_of_the_class_it_asked_for(client: openai.OpenAI, base: str) -> None:
    raw = client.images.with_raw_response.generate(
        model="mnist",
        prompt="3",
        n=4,
        size="28x28",
        response_format="b64_json",
        extra_body={"sampler": "ddim", "steps": 20, "seed": 123},
    )
    result = raw.parse()
    assert len(result.data) == 4 and result.created > 0
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.format == "PNG" and image.size == (28, 28) and image.mode == "L"
        assert item.revised_prompt == "3" and item.url is None
    job_id = raw.headers["x-job-id"]
    job = httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert job["params"]["sampler"] == "ddim" and job["params"]["steps"] == 20 and job["params"]["seed"] == 123
    check = job["check"]
    assert check["kind"] == "classifier" and check["asked_class"] == "3"
    assert check["matches"] == 4, check  # the service's own per-class check reads all four as a 3


def test_urls_point_at_each_image_of_the_job(client: openai.OpenAI, base: str) -> None:
    result = client.images.generate(
        model="mnist", prompt="7", n=2, extra_body={"sampler": "ddim", "steps": 10, "seed": 5}
    )
    assert [item.b64_json for item in result.data] == [None, None]
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        for index, item in enumerate(result.data):
            assert item.url.startswith(f"{base}/jobs/") and item.url.endswith(f"/images/{index}")
            answer = http.get(item.url)
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(answer.content)).size == (28, 28)
        assert http.get(item.url.rsplit("/", 1)[0] + "/2").status_code == 404  # n was 2
        assert httpx.get(item.url).status_code == 401  # reads need the key here


def test_an_unconditional_model_takes_any_prompt_and_says_so(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="sprites",
        prompt="a red flower",
        n=1,
        response_format="b64_json",
        extra_body={"sampler": "ddim", "steps": 10},
    )
    (item,) = result.data
    assert "unconditional" in item.revised_prompt
    assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size == (8, 8)


def test_models_and_errors_through_the_client(client: openai.OpenAI, base: str) -> None:
    assert {"mnist", "sprites", "checkerboard"} <= {model.id for model in client.models.list()}
    assert client.models.retrieve("mnist").owned_by == "ddpm-service"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("dall-e-3")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="mnist", prompt="a cat", n=1)
    assert bad.value.param == "prompt" and "unknown class 'a cat'" in bad.value.message
    with pytest.raises(openai.BadRequestError) as size:
        client.images.generate(model="mnist", prompt="1", size="1024x1024")
    assert size.value.param == "size"
    stranger = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.code == "invalid_api_key"
