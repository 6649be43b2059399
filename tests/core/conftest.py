"""Fixtures for the ddpm_core tests: small IDX data sets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpm_core.data import write_idx


def digit_strokes(digit: int, jitter: int = 0) -> np.ndarray:
    """A crude 28x28 uint8 drawing of a digit-like shape: a bar for 1, a ring for 0, a cross otherwise."""
    image = np.zeros((28, 28), np.uint8)
    if digit == 1:
        image[4:24, 12 + jitter : 16 + jitter] = 255
    elif digit == 0:
        yy, xx = np.mgrid[:28, :28]
        radius = np.sqrt((yy - 14) ** 2 + (xx - 14 - jitter) ** 2)
        image[(radius > 6) & (radius < 10)] = 255
    else:
        image[12:16, 4:24] = 255
        image[4:24, 12 + jitter : 16 + jitter] = 255
    return image


def write_mnist_like(directory: Path, digits: list[int], copies: int = 1, gz: bool = True) -> Path:
    """Write train and test IDX files of simple shapes for ``digits`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    images = np.stack([digit_strokes(d, jitter=i % 3 - 1) for i in range(copies) for d in digits])
    labels = np.array([d for _ in range(copies) for d in digits], np.uint8)
    suffix = ".gz" if gz else ""
    for split in ("train", "t10k"):
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return directory


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist_like(tmp_path / "mnist", [0, 1, 7], copies=4)
