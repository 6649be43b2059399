"""Naming a training data set in one string (``ddpm train --dataset``) and loading it.

- ``mnist``: the MNIST IDX files in ``data_dir`` (``ddpm data fetch mnist`` downloads them), classes '0'..'9';
- ``checkerboard``: the 2D toy, unconditional;
- ``folder:PATH``: a folder of images, one subfolder per class or flat (:mod:`ddpm_core.data.folder`);
- ``npy:IMAGES.npy[,LABELS.npy]``: arrays (:mod:`ddpm_core.data.arrays`).

Everything is read and validated here, before a model is built or a step is trained, and every
problem is one line: :class:`~ddpm_core.errors.UsageError` for options that do not fit the data
set, :class:`~ddpm_core.errors.DatasetError` for the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_core.data.mnist_source import DEFAULT_MNIST_DIR
from ddpm_core.errors import UsageError

if TYPE_CHECKING:
    from ddpm_core.data.datasets import ImageData, TrainingData

DATASET_KINDS = ("mnist", "checkerboard", "folder", "npy")
DATASET_HELP = "mnist, checkerboard, folder:PATH or npy:IMAGES.npy[,LABELS.npy]"


@dataclass(frozen=True)
class DataOptions:
    """How to read an image data set.

    ``image_size``: resize every image to image_size x image_size (default: the data's own size,
    28 for MNIST). ``channels``: 1 or 3 (a folder converts; MNIST and .npy data must already
    have that many). ``class_names``: names of the classes of .npy labels. ``unconditional``:
    drop the labels (a model without classes).
    """

    image_size: int | None = None
    channels: int | None = None
    class_names: tuple[str, ...] | None = None
    unconditional: bool = False
    data_dir: str | Path = DEFAULT_MNIST_DIR


def dataset_kind(spec: str) -> str:
    """The kind of a ``--dataset`` value: one of :data:`DATASET_KINDS`; UsageError for anything else."""
    if spec in ("mnist", "checkerboard"):
        return spec
    kind, _, rest = spec.partition(":")
    if kind in ("folder", "npy") and rest:
        return kind
    raise UsageError(f"unknown dataset {spec!r}; expected {DATASET_HELP}")


def npy_paths(spec: str) -> tuple[Path, Path | None]:
    """The images file and the labels file (or None) of ``npy:IMAGES.npy[,LABELS.npy]``."""
    rest = spec.partition(":")[2]
    images, comma, labels = rest.rpartition(",")
    if not comma or not labels.endswith(".npy"):  # no labels file (or a comma inside the images path)
        return Path(rest), None
    return Path(images), Path(labels)


def load_training_data(spec: str, options: DataOptions | None = None) -> TrainingData:
    """The data set named by ``spec`` (see the module docstring), read and validated.

    Raises:
        UsageError: an unknown ``spec`` or options that do not apply to it.
        DatasetError: missing, malformed or inconsistent data.
    """
    # the loaders import torch: imported here, so the names above stay torch-free (ddpm --help)
    from ddpm_core.data.arrays import load_npy_data
    from ddpm_core.data.datasets import CheckerboardData, load_mnist_data
    from ddpm_core.data.folder import load_image_folder

    options = options or DataOptions()
    kind = dataset_kind(spec)
    if options.class_names is not None:
        if kind != "npy":
            raise UsageError(
                "--class-names applies to npy:IMAGES.npy,LABELS.npy data "
                "(MNIST's classes are 0-9, a folder's are its subfolder names)"
            )
        if options.unconditional:
            raise UsageError("--class-names and --unconditional contradict each other")
    if options.image_size is not None and options.image_size < 1:
        raise UsageError(f"--image-size must be positive, got {options.image_size}")
    if kind == "checkerboard":
        if options.image_size is not None or options.channels is not None:
            raise UsageError("--image-size and --channels apply to image data sets, not checkerboard")
        return CheckerboardData()
    if kind == "mnist":
        if options.channels not in (None, 1):
            raise UsageError(f"MNIST images have 1 channel, not --channels {options.channels}")
        data: ImageData = load_mnist_data(options.data_dir, image_size=options.image_size)
    elif kind == "folder":
        data = load_image_folder(spec.partition(":")[2], options.image_size, options.channels)
    else:
        images, labels = npy_paths(spec)
        data = load_npy_data(
            images,
            labels,
            class_names=options.class_names,
            image_size=options.image_size,
            channels=options.channels,
        )
    return data.unconditional() if options.unconditional else data
