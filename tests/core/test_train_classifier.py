"""``python -m ddpm_core.evaluation.train_classifier`` for data other than MNIST: trained on the data
a model was trained on (named as ``ddpm train --dataset`` names it), written beside the model,
and paired to it by data set, classes, sample shape and fingerprint; models a classifier cannot
judge are refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_core.checkpoint import save_checkpoint
from ddpm_core.data import DataOptions, load_training_data
from ddpm_core.data.fingerprint import data_fingerprint
from ddpm_core.evaluation.classifier import load_classifier
from ddpm_core.evaluation.pairing import FoundClassifier, ModelSamples, find_classifier, paired_classifier_path
from ddpm_core.evaluation.train_classifier import main
from ddpm_core.models import UNet, UNetConfig
from ddpm_core.schedule import NoiseSchedule

SMALL = ["--epochs", "4", "--batch-size", "16", "--lr", "0.01", "--channels", "4,8,8", "--blocks", "1,1,1"]


def write_sprites(directory: Path) -> tuple[Path, Path]:
    """80 RGB 8 x 8 images (N, H, W, C): a red square (class 0) or a blue one (class 1) over noise."""
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 40)
    images = rng.integers(0, 80, (80, 8, 8, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2:6, 2:6, 0 if label == 0 else 2] = 255
    np.save(directory / "sprites.npy", images)
    np.save(directory / "labels.npy", labels)
    return directory / "sprites.npy", directory / "labels.npy"


def make_model(path: Path, dataset: str, class_names: list[str]) -> Path:
    torch.manual_seed(0)
    config = UNetConfig(
        image_size=8,
        in_channels=3,
        base_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
        num_res_blocks=1,
        num_classes=len(class_names),
        dropout=0.0,
        norm_groups=4,
    )
    return save_checkpoint(
        path, UNet(config), NoiseSchedule.linear(10), class_names=class_names, sample_shape=(3, 8, 8), dataset=dataset
    )


@pytest.fixture()
def sprites(tmp_path: Path) -> tuple[str, Path]:
    images, labels = write_sprites(tmp_path)
    spec = f"npy:{images},{labels}"
    model = make_model(tmp_path / "sprites.safetensors", f"npy:{images}", ["red", "blue"])  # as ddpm train names it
    return spec, model


def test_a_classifier_is_trained_beside_its_model_and_paired_to_it(sprites: tuple[str, Path]) -> None:
    torch.set_num_threads(1)
    spec, model = sprites
    assert main(["--dataset", spec, "--class-names", "red,blue", "--checkpoint", str(model), *SMALL]) == 0
    out = paired_classifier_path(model)
    assert out == model.with_name("sprites_classifier.safetensors") and out.is_file()
    loaded = load_classifier(out)
    data = load_training_data(spec, DataOptions(class_names=("red", "blue")))
    assert loaded.header.dataset == data.name and loaded.header.class_names == ("red", "blue")
    assert loaded.header.sample_shape == (3, 8, 8) and loaded.model.config.in_channels == 3
    assert loaded.header.dataset_fingerprint == data_fingerprint(data.images, data.labels, data.class_names)
    assert loaded.info["test_images"] == 8 and loaded.info["train_images"] == 72  # 10% held out
    assert loaded.header.test_accuracy >= 0.9  # red against blue: easy
    samples = ModelSamples.of(data.name, ["red", "blue"], (3, 8, 8), {})
    found = find_classifier(samples, model, default=model.with_name("mnist_classifier.safetensors"))
    assert isinstance(found, FoundClassifier) and found.path == out

    # the same data, a model of another fingerprint: not its classifier
    other = ModelSamples.of(data.name, ["red", "blue"], (3, 8, 8), {"data_fingerprint": "f" * 64})
    assert "fingerprints differ" in find_classifier(other, model, default=out)


def test_models_a_classifier_cannot_judge_are_refused(
    sprites: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, model = sprites
    assert main(["--dataset", spec, "--class-names", "blue,red", "--checkpoint", str(model), *SMALL]) == 2
    assert "the data's classes [blue, red] differ from sprites.safetensors's [red, blue]" in capsys.readouterr().err
    unconditional = make_model(tmp_path / "plain.safetensors", "npy:x.npy", [])
    assert main(["--dataset", spec, "--checkpoint", str(unconditional), *SMALL]) == 2
    assert "plain.safetensors is an unconditional model" in capsys.readouterr().err
    assert main(["--dataset", "checkerboard", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "checkerboard samples are points" in capsys.readouterr().err
    assert main(["--dataset", "mnist"]) == 2
    assert "--dataset mnist needs --data-dir" in capsys.readouterr().err
    assert main(["--dataset", spec, *SMALL]) == 2  # no --out and no model to write beside
    assert "give --out" in capsys.readouterr().err
    assert not paired_classifier_path(model).exists()
