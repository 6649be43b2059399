"""Images and labels from .npy files: layouts, pixel ranges, labels, class names and one-line errors."""

import numpy as np
import pytest
import torch

from ddpm_core.data import DatasetError, load_npy_data
from ddpm_core.data.arrays import channel_layout, open_npy

SPRITE_NAMES = ["hero", "non-hero", "food", "spell", "side-facing"]


def sprites(count=10, size=16, seed=0):
    """Random 16x16 RGB uint8 images (N, H, W, C) and one-hot float labels (N, 5), as the sprites files are."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = np.eye(5, dtype=np.float64)[np.arange(count) % 5]
    return images, labels


def save(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


def test_sprites_like_arrays_with_one_hot_labels_and_names(tmp_path):
    images, labels = sprites()
    data = load_npy_data(
        save(tmp_path, "images.npy", images), save(tmp_path, "labels.npy", labels), class_names=SPRITE_NAMES
    )
    assert data.sample_shape == (3, 16, 16) and data.class_names == SPRITE_NAMES and len(data) == 10
    np.testing.assert_array_equal(data.images.numpy(), images.transpose(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 1, 2, 3, 4] * 2
    batch, batch_labels = data.sample_batch(10, torch.Generator().manual_seed(0))
    assert batch.min() >= -1 and batch.max() <= 1
    assert batch.shape == (10, 3, 16, 16) and sorted(batch_labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    unnamed = load_npy_data(tmp_path / "images.npy", tmp_path / "labels.npy")
    assert unnamed.class_names == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    "convert",
    [
        lambda u8: u8.transpose(0, 3, 1, 2),  # NCHW uint8
        lambda u8: (u8 / 255.0).astype(np.float32),  # NHWC float in [0, 1]
        lambda u8: (u8.transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32),  # NCHW float in [-1, 1]
        lambda u8: u8.astype(np.int64),  # integers 0..255
    ],
    ids=["nchw-uint8", "nhwc-float01", "nchw-float-pm1", "nhwc-int64"],
)
def test_layouts_and_pixel_ranges_give_the_same_images(tmp_path, convert):
    images, _ = sprites()
    data = load_npy_data(save(tmp_path, "images.npy", convert(images)))
    np.testing.assert_array_equal(data.images.numpy(), images.transpose(0, 3, 1, 2))
    assert data.class_names == []  # no labels file: unconditional


def test_grey_rank_three_index_labels_and_resizing(tmp_path):
    images = np.zeros((6, 12, 12), np.uint8)
    images[:, 4:8, 4:8] = 255
    path = save(tmp_path, "grey.npy", images)
    labels = save(tmp_path, "idx.npy", np.array([0, 2, 1, 2, 0, 1]))
    data = load_npy_data(path, labels, class_names=["a", "b", "c"])
    assert data.sample_shape == (1, 12, 12) and data.labels.tolist() == [0, 2, 1, 2, 0, 1]
    resized = load_npy_data(path, image_size=24)
    assert resized.sample_shape == (1, 24, 24)
    assert resized.images[0, 0, 12, 12] == 255 and resized.images[0, 0, 0, 0] == 0
    extra_names = load_npy_data(path, labels, class_names=["a", "b", "c", "never-seen"])
    assert extra_names.class_names == ["a", "b", "c", "never-seen"]


def test_files_are_memory_mapped(tmp_path):
    path = save(tmp_path, "images.npy", sprites()[0])
    assert isinstance(open_npy(path), np.memmap)


@pytest.mark.parametrize(
    "shape, layout",
    [((5, 16, 16, 3), "NHWC"), ((5, 3, 16, 16), "NCHW"), ((5, 4, 4, 3), "NHWC"), ((5, 3, 4, 4), "NCHW")],
)
def test_channel_layout(shape, layout, tmp_path):
    assert channel_layout(shape, tmp_path) == layout


@pytest.mark.parametrize(
    "images, labels, names, message",
    [
        (np.zeros((4, 16), np.uint8), None, None, r"images must be .*got shape \(4, 16\) \(rank 2\)"),
        (np.zeros((4, 1, 16, 16, 3), np.uint8), None, None, r"rank 5"),
        (np.zeros((4, 16, 16, 5), np.uint8), None, None, "cannot tell the channel axis"),
        (np.zeros((4, 3, 3, 3), np.uint8), None, None, "cannot tell the channel axis"),
        (np.zeros((0, 8, 8, 3), np.uint8), None, None, "holds no images"),
        (np.full((4, 8, 8, 3), 3.0, np.float32), None, None, r"float pixels must lie in \[0, 1\] or \[-1, 1\]"),
        (np.full((4, 8, 8, 3), np.nan, np.float32), None, None, "NaN"),
        (np.full((4, 8, 8, 3), 300, np.int32), None, None, "0..255"),
        (np.zeros((4, 8, 6, 3), np.uint8), None, None, r"8x6 \(H x W\), not square"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.eye(5)[[0, 1, 2]], None, "has 3 labels for 4 images"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([[1, 0], [1, 1], [0, 1], [1, 0]]), None, "row 1 is not one-hot"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([[1, 0], [0, 1], [0, 0], [1, 0]]), None, "row 2 is not one-hot"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.eye(5)[[0, 1, 2, 3]], ["a", "b", "c"], "3 names for the 5 classes"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2, 3]), ["a", "b"], "2 names but .* class index 3"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, -1, 2, 3]), None, "must be >= 0"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 0.5, 2, 3]), None, "whole numbers"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 2, 2)), None, "labels must be class indices"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 1, 0]), ["a", "a"], "distinct"),
        (np.zeros((4, 8, 8, 3), np.uint8), None, ["a", "b"], "needs a labels file"),
    ],
)
def test_bad_arrays_are_one_line_errors(tmp_path, images, labels, names, message):
    images_path = save(tmp_path, "images.npy", images)
    labels_path = None if labels is None else save(tmp_path, "labels.npy", labels)
    with pytest.raises(DatasetError, match=message) as caught:
        load_npy_data(images_path, labels_path, class_names=names)
    assert "\n" not in str(caught.value)


def test_missing_npz_and_pickled_files_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_npy_data(tmp_path / "missing.npy")
    np.savez(tmp_path / "both.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "both.npy").write_bytes((tmp_path / "both.npz").read_bytes())
    with pytest.raises(DatasetError, match="npz archive"):
        load_npy_data(tmp_path / "both.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="not a .npy array"):
        load_npy_data(tmp_path / "objects.npy")
    with pytest.raises(DatasetError, match="--channels 1 does not match the 3 channel"):
        load_npy_data(save(tmp_path, "rgb.npy", np.zeros((2, 8, 8, 3), np.uint8)), channels=1)
