"""The README's five recipes, from files to a served, checked result: each system's data is made
small here, trained a couple of steps with ``ddpm train``, sampled with ``ddpm sample``,
exported with ``ddpm export`` into one model directory, and served by ``ddpm serve``: a job per
model (classes by name where the model has them), its PNG and GIF within the size bounds, and its
check present or the reason it was skipped. Bad requests get a clear 422 and change nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.core.conftest import write_mnist_like
from tests.core.test_train_systems import SPRITES, write_flowers, write_sprites
from tests.service.conftest import REPO, wait_job
from tests.service.test_serve import Serve, submit

TINY = ["--base-channels", "8", "--num-res-blocks", "1", "--max-steps", "2", "--batch-size", "4", "--no-progress"]
GIF_LIMIT = 10 * 1024 * 1024


def ddpm(*args: object) -> None:
    """Run the ``ddpm`` command as a user does; fail the test with its output when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "ddpm_core", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"ddpm {' '.join(map(str, args))}:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five systems trained tiny, sampled and exported into one model directory."""
    root = tmp_path_factory.mktemp("recipes")
    models = root / "checkpoints"
    mnist = write_mnist_like(root / "mnist", [0, 1, 7], copies=2)
    images, labels = write_sprites(root / "sprites")
    flowers = write_flowers(root / "flowers")
    recipes = {
        "mnist": ["--dataset", "mnist", "--data-dir", mnist, "--channel-mult", "1,2", "--num-train-timesteps", "20"],
        "mnist32": [
            "--dataset", "mnist", "--data-dir", mnist, "--image-size", "32", "--channel-mult", "1,2,4,8",
            "--schedule", "cosine", "--loss", "l1", "--num-train-timesteps", "20",
        ],
        "sprites": [
            "--dataset", f"npy:{images},{labels}", "--class-names", ",".join(SPRITES), "--channel-mult", "1,2",
            "--num-train-timesteps", "20",
        ],
        "flowers": [
            "--dataset", f"folder:{flowers}", "--image-size", "64", "--unconditional", "--schedule", "linear",
            "--num-train-timesteps", "350", "--beta-start", "1e-4", "--beta-end", "2e-2", "--channel-mult", "1,2",
        ],
        "checkerboard": [
            "--dataset", "checkerboard", "--schedule", "linear", "--num-train-timesteps", "100", "--scale-betas",
            "--hidden-dim", "32", "--num-layers", "2", "--max-steps", "2", "--no-progress",
        ],
    }  # fmt: skip
    for name, options in recipes.items():
        run = root / "runs" / name
        ddpm("train", *options, *(TINY if name != "checkerboard" else []), "--out", run)
        sample = ["--class", "hero"] if name == "sprites" else ["--class", "7"] if name.startswith("mnist") else []
        ddpm("sample", "--checkpoint", run / "model.safetensors", *sample, "--n", "2", "--sampler", "ddim",
             "--steps", "2", "--png", root / f"{name}.png")  # fmt: skip
        assert (root / f"{name}.png").stat().st_size > 0
        ddpm("export", "--checkpoint", run / "model.safetensors", "--out", models / f"{name}.safetensors")
    return models


def test_every_recipe_is_served_with_named_classes_and_bounded_results(model_dir: Path, tmp_path: Path) -> None:
    with Serve(model_dir, tmp_path / "data", "recipes.log", DDPM_DEFAULT_MODEL="mnist", DDPM_GIF_FRAMES="40") as serve:
        serve.wait_ready(timeout=120)
        with httpx.Client(base_url=serve.base, timeout=60) as client:
            offered = {model["name"]: model for model in client.get("/models").json()["models"]}
            assert set(offered) == {"mnist", "mnist32", "sprites", "flowers", "checkerboard"}
            assert offered["sprites"]["class_names"] == SPRITES
            assert offered["flowers"]["class_names"] == [] and not offered["flowers"]["conditional"]
            assert str(model_dir) not in client.get("/models").text
            ddim = {"sampler": "ddim", "steps": 10}
            jobs = {
                "mnist": submit(client, {"model": "mnist", "digit": 7, "n": 4, **ddim}),
                "mnist32": submit(client, {"model": "mnist32", "class": "7", "n": 4, **ddim}),
                "sprites": submit(client, {"model": "sprites", "class": "hero", "n": 4, **ddim}),
                "flowers": submit(client, {"model": "flowers", "n": 16, **ddim}),
                "checkerboard": submit(client, {"model": "checkerboard", "n": 4000, **ddim}),
            }
            # bad input: a clear 422, and nothing is queued
            unknown = client.post("/generate", json={"model": "sprites", "class": "villain"})
            assert unknown.status_code == 422 and all(name in unknown.text for name in SPRITES), unknown.text
            assert client.post("/generate", json={"model": "flowers", "class": "rose"}).status_code == 422
            records = {name: wait_job(client, job, timeout=300) for name, job in jobs.items()}
            for name, record in records.items():
                assert record["status"] == "succeeded", (name, record)
                png = client.get(f"/jobs/{jobs[name]}/png").content
                gif = client.get(f"/jobs/{jobs[name]}/gif").content
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and gif[:6] == b"GIF89a", name
                assert len(gif) <= GIF_LIMIT, (name, len(gif))
                check = record["check"]
                assert check is not None, (name, record)  # checked, or skipped with its reason
        assert serve.stop() == 0
