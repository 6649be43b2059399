import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_core.data import (
    CheckerboardData,
    DatasetError,
    checkerboard_fraction_on_black,
    load_image_folder,
    load_mnist,
    load_mnist_data,
    read_idx,
    write_idx,
)
from tests.core.conftest import write_mnist_like


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_mnist_loader(tmp_path, gz):
    directory = write_mnist_like(tmp_path / "d", [3, 1, 4], copies=2, gz=gz)
    images, labels = load_mnist(directory, "train")
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [3, 1, 4, 3, 1, 4]
    data = load_mnist_data(directory)
    batch, batch_labels = data.sample_batch(4, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 1, 28, 28) and batch.min() >= -1 and batch.max() <= 1
    assert set(batch_labels.tolist()) <= {1, 3, 4}
    assert data.class_names == [str(d) for d in range(10)]


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x05"))
    with pytest.raises(DatasetError, match="truncated|expected"):
        read_idx(bad)
    (tmp_path / "notidx").write_bytes(b"hello world")
    with pytest.raises(DatasetError, match="not an IDX"):
        read_idx(tmp_path / "notidx")
    with pytest.raises(DatasetError, match="ddpm data fetch mnist --dir"):
        load_mnist(tmp_path / "empty")
    write_idx(tmp_path / "a.gz", np.zeros((2, 2), np.uint8))
    assert read_idx(tmp_path / "a.gz").shape == (2, 2)


def test_epochs_visit_every_example_once(tmp_path):
    data = load_mnist_data(write_mnist_like(tmp_path / "d", [0, 1, 2, 3, 4], copies=2))
    generator = torch.Generator().manual_seed(0)
    seen = torch.cat([data.sample_batch(5, generator)[0].flatten(1) for _ in range(2)])
    assert torch.unique(seen, dim=0).shape[0] == torch.unique(data.images.flatten(1).float(), dim=0).shape[0]


def test_image_folder(tmp_path):
    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("ignored")
    data = load_image_folder(tmp_path, image_size=16, channels=3)
    assert data.class_names == ["cats", "dogs"] and data.sample_shape == (3, 16, 16) and len(data) == 6
    images, labels = data.sample_batch(6, torch.Generator().manual_seed(0))
    red = images[labels == 0]
    assert torch.allclose(red[:, 0], torch.ones_like(red[:, 0])) and torch.allclose(
        red[:, 2], -torch.ones_like(red[:, 2])
    )
    grey = load_image_folder(tmp_path, image_size=8, channels=1)
    assert grey.sample_shape == (1, 8, 8)
    flat = load_image_folder(tmp_path / "cats", 8, 1)  # a flat folder: unconditional
    assert flat.class_names == [] and len(flat) == 3


def test_checkerboard_points_lie_on_black_squares():
    points, labels = CheckerboardData().sample_batch(5000, torch.Generator().manual_seed(0))
    assert points.shape == (5000, 2) and labels.eq(0).all()
    assert points.min() >= -1 and points.max() <= 1
    assert checkerboard_fraction_on_black(points) == 1.0
    uniform = torch.rand(20000, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert checkerboard_fraction_on_black(uniform) == pytest.approx(0.5, abs=0.02)
    assert checkerboard_fraction_on_black(torch.tensor([[-0.9, -0.9], [-0.4, -0.9]])) == 0.5
