"""``--dataset`` strings, the options that go with them, MNIST at other sizes and --unconditional."""

from pathlib import Path

import numpy as np
import pytest

from ddpm_core.data import DataOptions, dataset_kind, load_mnist_data, load_training_data
from ddpm_core.data.spec import npy_paths
from ddpm_core.errors import UsageError
from tests.core.conftest import write_mnist_like


@pytest.mark.parametrize(
    "spec, kind",
    [("mnist", "mnist"), ("checkerboard", "checkerboard"), ("folder:x/y", "folder"), ("npy:a.npy,b.npy", "npy")],
)
def test_dataset_kinds(spec, kind):
    assert dataset_kind(spec) == kind


@pytest.mark.parametrize("spec", ["imagenet", "folder:", "npy:", "mnist:x", ""])
def test_unknown_datasets(spec):
    with pytest.raises(UsageError, match="unknown dataset"):
        dataset_kind(spec)


def test_npy_paths():
    assert npy_paths("npy:data/images.npy") == (Path("data/images.npy"), None)
    assert npy_paths("npy:data/images.npy,data/labels.npy") == (Path("data/images.npy"), Path("data/labels.npy"))
    assert npy_paths("npy:a,b/images.npy,labels.npy") == (Path("a,b/images.npy"), Path("labels.npy"))


def test_mnist_at_32_pixels(tmp_path):
    directory = write_mnist_like(tmp_path / "mnist", [1, 0], copies=2)
    native = load_mnist_data(directory)
    data = load_mnist_data(directory, image_size=32)
    assert native.sample_shape == (1, 28, 28) and data.sample_shape == (1, 32, 32) and data.name == "mnist"
    assert data.class_names == [str(digit) for digit in range(10)] and data.labels.tolist() == [1, 0, 1, 0]
    one, small = data.images[0, 0].numpy().astype(float), native.images[0, 0].numpy().astype(float)
    assert one[16, 16] == 255 and one[0].max() == 0 and one[:, 0].max() == 0  # the bar stays centred, edges blank
    assert one.sum() / small.sum() == pytest.approx((32 / 28) ** 2, rel=0.05)  # ink scales with the area


def test_options_that_do_not_fit_the_data_set(tmp_path):
    with pytest.raises(UsageError, match="--class-names applies to npy"):
        load_training_data("mnist", DataOptions(class_names=("a",)))
    with pytest.raises(UsageError, match="not checkerboard"):
        load_training_data("checkerboard", DataOptions(image_size=32))
    with pytest.raises(UsageError, match="MNIST images have 1 channel"):
        load_training_data("mnist", DataOptions(channels=3, data_dir=tmp_path))
    with pytest.raises(UsageError, match="contradict"):
        load_training_data("npy:a.npy,b.npy", DataOptions(class_names=("a",), unconditional=True))
    with pytest.raises(UsageError, match="must be positive"):
        load_training_data("mnist", DataOptions(image_size=0))


def test_unconditional_drops_the_classes(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 8, 8, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    spec = f"npy:{tmp_path / 'images.npy'},{tmp_path / 'labels.npy'}"
    assert load_training_data(spec).class_names == ["0", "1", "2"]
    data = load_training_data(spec, DataOptions(unconditional=True))
    assert data.class_names == [] and data.labels.tolist() == [0, 0, 0, 0] and data.sample_shape == (3, 8, 8)
    mnist = load_training_data("mnist", DataOptions(data_dir=write_mnist_like(tmp_path / "m", [3]), unconditional=True))
    assert mnist.class_names == [] and mnist.name == "mnist"
    assert load_training_data("checkerboard", DataOptions(unconditional=True)).class_names == []
