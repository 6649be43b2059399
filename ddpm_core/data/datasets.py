"""Training data sets: in-memory images (MNIST here; folders and .npy arrays in their own modules)
and the 2D checkerboard.

Each data set hands out random batches as float tensors in [-1, 1] with integer labels, so the
trainer needs no DataLoader: everything small enough for this project fits in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ddpm_core.data.mnist import load_mnist
from ddpm_core.data.mnist_source import MNIST_CLASS_NAMES
from ddpm_core.data.resize import resize_square
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)


class TrainingData(Protocol):
    """What the trainer needs of a data set: a name, class names, a sample shape and random batches."""

    name: str
    class_names: list[str]
    sample_shape: tuple[int, ...]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (B, *sample_shape) in [-1, 1] and labels (B,) int64."""
        ...


class ImageData:
    """Images held in memory as uint8 (N, C, H, W), drawn in shuffled epochs.

    ``labels`` (N,) index ``class_names``; with no class names the data is unconditional.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
        if images.ndim != 4 or len(images) == 0 or len(images) != len(labels):
            raise DatasetError(f"{name}: need a non-empty (N, C, H, W) image array with one label each")
        self.name = name
        # copies only what is not already an owned, writable, contiguous uint8 array (a memmap is copied)
        self.images = torch.from_numpy(np.require(images, np.uint8, ["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"]))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.class_names = list(class_names)
        self.sample_shape = tuple(self.images.shape[1:])
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0

    def __len__(self) -> int:
        return len(self.images)

    def unconditional(self) -> ImageData:
        """The same images without classes (every label 0, no class names), for an unconditional model."""
        data = ImageData.__new__(ImageData)
        data.__dict__.update(self.__dict__)
        data.labels = torch.zeros(len(self.images), dtype=torch.int64)
        data.class_names = []
        return data

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``batch_size`` images of the shuffled epoch, (B, C, H, W) float in [-1, 1], and labels (B,)."""
        indices = []
        needed = batch_size
        while needed:
            if self._position >= len(self._order):
                self._order = torch.randperm(len(self.images), generator=generator)
                self._position = 0
            take = self._order[self._position : self._position + needed]
            self._position += len(take)
            needed -= len(take)
            indices.append(take)
        index = torch.cat(indices)
        images = self.images[index].float().div_(127.5).sub_(1.0)
        return images, self.labels[index]


def load_mnist_data(data_dir: str | Path, split: str = "train", image_size: int | None = None) -> ImageData:
    """MNIST as an :class:`ImageData` of (N, 1, S, S) images with classes '0' to '9'.

    ``image_size`` S defaults to MNIST's 28; another size resizes every digit bilinearly (28 -> 32
    as a 32-pixel MNIST model is trained), so the data's shape is the one the model is built for.
    """
    images, labels = load_mnist(data_dir, split)
    images = images[:, None]
    if image_size is not None and image_size != images.shape[-1]:
        images = resize_square(images, image_size)
        logger.info("resized MNIST digits from 28 to %d pixels (bilinear)", image_size)
    return ImageData("mnist", images, labels, MNIST_CLASS_NAMES)


class CheckerboardData:
    """The 2D checkerboard: points uniform in [0, 4]^2 kept where floor(x) + floor(y) is even,
    mapped to [-1, 1]^2 by (p - 2) / 2. Unconditional: every label is 0 and there are no classes."""

    name = "checkerboard"
    class_names: list[str] = []
    sample_shape = (2,)

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` points (B, 2) in [-1, 1]^2 by rejection sampling, and zero labels (B,)."""
        kept = []
        count = 0
        while count < batch_size:
            points = torch.rand(2 * batch_size, 2, generator=generator) * 4.0
            points = points[on_black_squares(points)]
            kept.append(points)
            count += len(points)
        points = torch.cat(kept)[:batch_size]
        return (points - 2.0) / 2.0, torch.zeros(batch_size, dtype=torch.long)


def on_black_squares(points: torch.Tensor) -> torch.Tensor:
    """Whether points (N, 2) in board coordinates [0, 4]^2 lie on squares with floor(x)+floor(y) even."""
    inside = ((points >= 0) & (points < 4)).all(dim=1)
    return inside & (torch.floor(points).sum(dim=1).long() % 2 == 0)


def checkerboard_fraction_on_black(samples: torch.Tensor | np.ndarray) -> float:
    """The fraction of samples (N, 2) in the toy's [-1, 1] space that land on black squares
    (host arrays are measured with numpy, the same rule as :func:`on_black_squares`)."""
    if isinstance(samples, np.ndarray):
        board = samples.astype(np.float64) * 2.0 + 2.0
        inside = ((board >= 0) & (board < 4)).all(axis=1)
        return float((inside & (np.floor(board).sum(axis=1).astype(np.int64) % 2 == 0)).mean())
    return on_black_squares(samples.double() * 2.0 + 2.0).double().mean().item()
