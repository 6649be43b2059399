"""Data sets: MNIST IDX files, folders of images, .npy arrays and the 2D checkerboard.

Attributes are imported lazily, so the torch-free modules (``mnist_source``, ``download``) stay
torch-free when imported through this package.
"""

from __future__ import annotations

from ddpm_core.lazy import lazy_exports

_EXPORTS = {
    "load_npy_data": "ddpm_core.data.arrays",
    "CheckerboardData": "ddpm_core.data.datasets",
    "ImageData": "ddpm_core.data.datasets",
    "TrainingData": "ddpm_core.data.datasets",
    "checkerboard_fraction_on_black": "ddpm_core.data.datasets",
    "load_mnist_data": "ddpm_core.data.datasets",
    "load_image_folder": "ddpm_core.data.folder",
    "DatasetError": "ddpm_core.errors",
    "MNIST_CLASS_NAMES": "ddpm_core.data.mnist_source",
    "find_mnist_files": "ddpm_core.data.mnist_source",
    "load_mnist": "ddpm_core.data.mnist",
    "read_idx": "ddpm_core.data.mnist",
    "write_idx": "ddpm_core.data.mnist",
    "DataOptions": "ddpm_core.data.spec",
    "dataset_kind": "ddpm_core.data.spec",
    "load_training_data": "ddpm_core.data.spec",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
