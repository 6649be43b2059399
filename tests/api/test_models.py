"""Every model kind through the API in-process (a real Redis, no worker): GET /models describes
each (kind, classes, limits, check), POST /generate takes a class by name or index within the
model's own sample limit, and nothing the API answers shows a server path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from contract.checkable import CheckPlan, check_plan
from contract.layout import JobRecord
from contract.settings import REPO_ROOT, Settings
from ddpm_core.sampler_specs import SAMPLER_NAMES
from serve.redis_server import EmbeddedRedis
from tests.api.kinds import SPRITE_CLASSES, TRAINING_STEPS, write_model_kinds
from tests.api.test_requests import MODEL, app_client


@pytest.fixture(scope="module")
def kinds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_kinds(tmp_path_factory.mktemp("kinds"))


@pytest.fixture()
def client(redis_server: EmbeddedRedis, kinds_dir: Path) -> Iterator[TestClient]:
    for client, _ in app_client(redis_server, kinds_dir):
        yield client


def stored_spec(client: TestClient, redis_server: EmbeddedRedis, body: dict) -> dict:
    """Submit ``body`` (202 expected); the spec stored with the job."""
    answer = client.post("/generate", json=body)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    prefix = client.app.state.settings.key_prefix
    fields = redis.Redis.from_url(redis_server.url, decode_responses=True).hgetall(f"{prefix}:job:{job_id}")
    return JobRecord.from_hash(job_id, fields).spec.model_dump()


def refused(client: TestClient, body: dict, field: str) -> str:
    """Submit ``body`` (422 naming ``field`` expected); the message."""
    answer = client.post("/generate", json=body)
    assert answer.status_code == 422, answer.text
    assert [item["field"] for item in answer.json()["detail"]] == [field], answer.text
    return answer.json()["message"]


def test_models_describe_every_kind(client: TestClient) -> None:
    listing = client.get("/models").json()
    models = {model["name"]: model for model in listing["models"]}
    assert set(models) == {"mnist", "sprites", "flowers", "board"}
    mnist, sprites, flowers, board = (models[name] for name in ("mnist", "sprites", "flowers", "board"))
    assert (mnist["kind"], mnist["sample_shape"], mnist["n_limit"]) == ("image", [1, 28, 28], 64)
    assert mnist["class_names"] == [str(digit) for digit in range(10)] and mnist["conditional"]
    assert mnist["training_steps"] == TRAINING_STEPS and mnist["default_guidance"] == 0.5
    assert (sprites["kind"], sprites["class_names"], sprites["n_limit"]) == ("image", SPRITE_CLASSES, 64)
    assert sprites["default_guidance"] == 2.0 and sprites["training_steps"] == 10
    # 3 x 64 x 64: 65,536 pixels per job hold 16 images of 64 x 64
    assert (flowers["kind"], flowers["sample_shape"], flowers["n_limit"]) == ("image", [3, 64, 64], 16)
    assert flowers["class_names"] == [] and flowers["conditional"] is False and flowers["training_steps"] is None
    assert (board["kind"], board["sample_shape"], board["n_limit"]) == ("points", [2], 10000)
    assert board["conditional"] is False
    # checked: checkerboard points always; MNIST only with the classifier file (none here)
    assert board["check"] == {"checked": True, "by": "the checkerboard's squares", "skipped": None}
    no_file = "no classifier file mnist_classifier.safetensors"
    assert mnist["check"] == {"checked": False, "by": None, "skipped": no_file}
    assert sprites["check"]["skipped"] == "no classifier for dataset 'sprites'" and not sprites["check"]["checked"]
    assert flowers["check"]["skipped"] == "no classifier for dataset 'flowers'"
    assert listing["limits"] == {
        "max_n": 64,
        "max_pixels_per_job": 65536,
        "max_points_per_job": 10000,
        "min_steps": None,
        "max_guidance": 10.0,
    }
    # the samplers, as the registry has them, and each model's steps (its own T bounds them)
    assert [sampler["name"] for sampler in listing["samplers"]] == list(SAMPLER_NAMES)
    assert (listing["default_sampler"], listing["fast_sampler"]) == ("ddpm", "uni_pc")
    by_name = {sampler["name"]: sampler for sampler in listing["samplers"]}
    assert by_name["uni_pc"]["min_steps"] == 5 and by_name["uni_pc"]["default_steps"] == 8
    assert by_name["ddpm"]["min_steps"] is None and not by_name["ddpm"]["chooses_steps"]
    assert by_name["dpmpp_2m"]["deterministic"] and not by_name["ddpm"]["deterministic"]
    total = board["num_train_timesteps"]
    assert board["steps"]["ddpm"] == {"min": total, "max": total, "default": total}
    assert board["steps"]["ddim"] == {"min": 10, "max": total, "default": min(50, total)}
    assert board["steps"]["uni_pc"] == {"min": 5, "max": total, "default": 8}


def test_an_mnist_model_is_checked_when_the_classifier_file_is_there(
    redis_server: EmbeddedRedis, kinds_dir: Path, tmp_path: Path
) -> None:
    classifier = tmp_path / "digits.safetensors"
    shutil.copyfile(REPO_ROOT / "checkpoints" / "mnist_classifier.safetensors", classifier)  # the shipped one
    for client, _ in app_client(redis_server, kinds_dir, classifier=str(classifier)):
        models = {model["name"]: model for model in client.get("/models").json()["models"]}
        assert models["mnist"]["check"] == {"checked": True, "by": "the classifier digits", "skipped": None}
        assert not models["sprites"]["check"]["checked"]  # the digit classifier judges no sprites
    classifier.write_bytes(b"not a classifier")  # the worker's rule: the header must pair it to the model
    for client, _ in app_client(redis_server, kinds_dir, classifier=str(classifier)):
        models = {model["name"]: model for model in client.get("/models").json()["models"]}
        assert models["mnist"]["check"]["skipped"] == "the classifier digits.safetensors cannot be loaded"
    for client, _ in app_client(redis_server, kinds_dir, classifier=""):
        models = {model["name"]: model for model in client.get("/models").json()["models"]}
        assert models["mnist"]["check"]["skipped"] == "the per-class check is off (DDPM_CLASSIFIER is empty)"
        assert models["board"]["check"]["checked"]  # points need no classifier file


def test_no_answer_shows_a_server_path(
    redis_server: EmbeddedRedis, kinds_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    extra_dir = tmp_path_factory.mktemp("single-checkpoint")
    single = write_model_kinds(extra_dir) / "board.safetensors"
    classifier_dir = tmp_path_factory.mktemp("classifier")
    for client, _ in app_client(
        redis_server, kinds_dir, checkpoint=single, classifier=str(classifier_dir / "absent.safetensors")
    ):
        answers = [
            client.get("/models"),
            client.get("/openapi.json"),
            client.post("/generate", json={"model": "nope"}),
            client.post("/generate", json={"model": "flowers", "class": 1}),
        ]
        job = client.post("/generate", json={"model": "board", "n": 100, "sampler": "ddim"}).json()
        answers.append(client.get(f"/jobs/{job['id']}"))
        assert len(answers[0].json()["models"]) == 4
        for directory in (kinds_dir, extra_dir, classifier_dir):
            for form in {str(directory), str(directory.resolve())}:
                for answer in answers:
                    assert form not in answer.text, (answer.request.url, form)
        assert "safetensors" not in answers[0].text.replace("absent.safetensors", "")


@pytest.mark.parametrize(
    ("body", "index"),
    [
        ({"model": "sprites", "class": "food"}, 2),
        ({"model": "sprites", "class": "side-facing"}, 4),
        ({"model": "sprites", "class": 3}, 3),
        ({"model": "sprites", "class": " 1 "}, 1),  # an index written out, as `ddpm sample --class` reads it
        ({"model": "sprites", "digit": 4}, 4),  # digit: the class index, for any conditional model
        ({"model": "sprites", "class": "hero", "digit": 0}, 0),  # both, agreeing
        ({"model": "mnist", "class": "7"}, 7),
        ({"model": "mnist", "class": 7}, 7),
        ({"model": "mnist", "digit": 7}, 7),
        ({"model": "mnist", "class": "7", "digit": 7}, 7),
        ({"model": "mnist"}, None),  # a conditional model drawn unconditionally
        ({"model": "flowers"}, None),
        ({"model": "board"}, None),
    ],
)
def test_a_class_by_name_or_index_becomes_the_specs_class_index(
    client: TestClient, redis_server: EmbeddedRedis, body: dict, index: int | None
) -> None:
    spec = stored_spec(client, redis_server, {**body, "n": 2, "sampler": "ddim", "steps": 10})
    assert spec["digit"] == index and spec["model"] == body["model"]


def test_an_unknown_class_lists_the_models_classes(client: TestClient) -> None:
    message = refused(client, {"model": "sprites", "class": "dragon"}, "class")
    assert "unknown class 'dragon' for model 'sprites'" in message
    assert "hero, non-hero, food, spell, side-facing" in message and "index 0 to 4" in message
    message = refused(client, {"model": "sprites", "class": 5}, "class")
    assert "model 'sprites' has 5 classes (0 to 4): hero, non-hero, food, spell, side-facing" in message
    assert "its classes: 0, 1, 2" in refused(client, {"model": "mnist", "class": "seven"}, "class")
    refused(client, {"model": "mnist", "class": "10"}, "class")
    assert "digit" in refused(client, {"model": "mnist", "digit": 10}, "digit")


@pytest.mark.parametrize("value", [2.5, True, "", [1], {"name": "hero"}, -1])
def test_a_class_that_is_neither_a_name_nor_an_index_is_422(client: TestClient, value: object) -> None:
    refused(client, {"model": "sprites", "class": value}, "class")


@pytest.mark.parametrize(("model", "field"), [("flowers", "class"), ("board", "class"), ("flowers", "digit")])
def test_a_class_for_an_unconditional_model_is_422(client: TestClient, model: str, field: str) -> None:
    value = "hero" if field == "class" else 0
    message = refused(client, {"model": model, field: value}, field)
    assert f"model {model!r} is unconditional; omit {field}" in message


def test_class_and_digit_that_disagree_are_422(client: TestClient) -> None:
    message = refused(client, {"model": "mnist", "class": "3", "digit": 4}, "class")
    assert "class '3' (index 3) and digit 4 disagree" in message
    refused(client, {"model": "sprites", "class": "hero", "digit": 1}, "class")


def test_redraw_mismatches_needs_a_class(client: TestClient, redis_server: EmbeddedRedis) -> None:
    message = refused(client, {"model": "mnist", "redraw_mismatches": True}, "redraw_mismatches")
    assert "needs a class" in message
    spec = stored_spec(client, redis_server, {"model": "sprites", "class": "spell", "redraw_mismatches": True})
    assert spec["redraw_rounds"] == 2 and spec["digit"] == 3


def test_each_model_has_its_own_sample_limit(client: TestClient, redis_server: EmbeddedRedis) -> None:
    ddim = {"sampler": "ddim", "steps": 10}
    assert stored_spec(client, redis_server, {"model": "flowers", "n": 16, **ddim})["n"] == 16
    message = refused(client, {"model": "flowers", "n": 17}, "n")
    assert message.startswith("invalid request: n: must be at most 16 for model 'flowers' (3x64x64 images:")
    assert "DDPM_MAX_PIXELS_PER_JOB=65536" in message
    assert "must be at most 64 for model 'mnist'" in refused(client, {"model": "mnist", "n": 65}, "n")
    assert stored_spec(client, redis_server, {"model": "board", "n": 10000, **ddim})["n"] == 10000
    assert "must be at most 10000 for model 'board'" in refused(client, {"model": "board", "n": 10001}, "n")
    # over every model's limit (the schema's bound): still the chosen model's own limit, not the points'
    message = refused(client, {"model": "mnist", "digit": 3, "n": 100000}, "n")
    assert "must be at most 64 for model 'mnist'" in message and "10000" not in message
    assert "at most 16 for model 'flowers'" in refused(client, {"model": "flowers", "n": 10**30}, "n")
    # n left out: 16, or the model's limit when lower
    assert stored_spec(client, redis_server, {"model": "board", **ddim})["n"] == 16


def test_limits_follow_the_settings(redis_server: EmbeddedRedis, kinds_dir: Path) -> None:
    for client, _ in app_client(redis_server, kinds_dir, max_pixels_per_job=4 * 64 * 64, max_points_per_job=500):
        models = {model["name"]: model for model in client.get("/models").json()["models"]}
        assert (models["flowers"]["n_limit"], models["sprites"]["n_limit"], models["board"]["n_limit"]) == (4, 64, 500)
        assert models["mnist"]["n_limit"] == 4 * 64 * 64 // (28 * 28) == 20
        schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]
        assert schema["n"]["maximum"] == 500  # the largest any model may get
        spec = client.post("/generate", json={"model": "flowers", "sampler": "ddim"})
        assert spec.status_code == 202
        job = client.get(spec.json()["links"]["self"]).json()
        assert job["params"]["n"] == 4  # the default of 16 lowered to the model's limit
        assert "must be at most 4 for model 'flowers'" in refused(client, {"model": "flowers", "n": 5}, "n")


def test_openapi_documents_class_as_a_name_or_an_index(client: TestClient) -> None:
    request = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]
    assert "class" in request["properties"] and "class_" not in request["properties"]
    (choice, null) = request["properties"]["class"]["anyOf"]
    assert {option["type"] for option in choice["oneOf"]} == {"integer", "string"} and null == {"type": "null"}
    assert refused(client, {"class_": 1}, "class_")  # the Python name is not a field of the API


@pytest.mark.parametrize(
    ("dataset", "shape", "classes", "skipped"),
    [
        ("moons", [2], 0, "no measure for points of dataset 'moons'"),
        ("checkerboard", [3], 0, "no measure for points of dataset 'checkerboard'"),
        ("mnist", [1, 32, 32], 10, "no classifier for samples of shape (1, 32, 32)"),
        ("mnist", [1, 28, 28], 9, "no classifier for 9 classes (the classifier has 10)"),
        ("folder:sprites", [3, 16, 16], 5, "no classifier for dataset 'folder:sprites'"),
    ],
)
def test_models_no_check_covers_say_why(dataset: str, shape: list[int], classes: int, skipped: str) -> None:
    model = MODEL.model_copy(
        update={"dataset": dataset, "sample_shape": shape, "class_names": [str(c) for c in range(classes)]}
    )
    assert check_plan(model, Settings()) == CheckPlan(checked=False, skipped=skipped)
