"""Training data sets: in-memory images (MNIST, a folder of images) and the 2D checkerboard.

Each data set hands out random batches as float tensors in [-1, 1] with integer labels, so the
trainer needs no DataLoader: everything small enough for this project fits in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ddpm_core.data.mnist import MNIST_CLASS_NAMES, load_mnist
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class TrainingData(Protocol):
    """What the trainer needs of a data set: a name, class names, a sample shape and random batches."""

    name: str
    class_names: list[str]
    sample_shape: tuple[int, ...]

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (B, *sample_shape) in [-1, 1] and labels (B,) int64."""
        ...


class ImageData:
    """Images held in memory as uint8 (N, C, H, W), drawn in shuffled epochs."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
        if images.ndim != 4 or len(images) == 0 or len(images) != len(labels):
            raise DatasetError(f"{name}: need a non-empty (N, C, H, W) image array with one label each")
        self.name = name
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.class_names = list(class_names)
        self.sample_shape = tuple(self.images.shape[1:])
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0

    def __len__(self) -> int:
        return len(self.images)

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


def load_mnist_data(data_dir: str | Path, split: str = "train", download: bool = True) -> ImageData:
    """MNIST as an :class:`ImageData` of (N, 1, 28, 28) images with classes '0' to '9'."""
    images, labels = load_mnist(data_dir, split, download=download)
    return ImageData("mnist", images[:, None], labels, MNIST_CLASS_NAMES)


def load_image_folder(root: str | Path, image_size: int, channels: int) -> ImageData:
    """Images from ``root/<class name>/*.png`` (any common format), resized to a centred square.

    ``channels`` is 1 (grey) or 3 (RGB). Class names are the sorted subfolder names.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels}")
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    if not class_dirs:
        raise DatasetError(f"{root} has no class subfolders (expected {root}/<class>/<image>)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB")
                    side = min(image.size)
                    left, top = (image.width - side) // 2, (image.height - side) // 2
                    image = image.crop((left, top, left + side, top + side))
                    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
                    array = np.asarray(image, dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as error:
                raise DatasetError(f"cannot read image {path}: {error}") from None
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"no images found under {root}")
    logger.info("loaded %d images in %d classes from %s", len(images), len(class_dirs), root)
    return ImageData(f"folder:{root}", np.stack(images), np.asarray(labels), [path.name for path in class_dirs])


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


def checkerboard_fraction_on_black(samples: torch.Tensor) -> float:
    """The fraction of samples (N, 2) in the toy's [-1, 1] space that land on black squares."""
    return on_black_squares(samples.double() * 2.0 + 2.0).double().mean().item()
