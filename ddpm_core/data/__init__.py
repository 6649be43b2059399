"""Data sets: MNIST IDX files, folders of images, .npy arrays and the 2D checkerboard."""

from ddpm_core.data.arrays import load_npy_data
from ddpm_core.data.datasets import (
    CheckerboardData,
    ImageData,
    TrainingData,
    checkerboard_fraction_on_black,
    load_mnist_data,
)
from ddpm_core.data.folder import load_image_folder
from ddpm_core.data.mnist import MNIST_CLASS_NAMES, DatasetError, load_mnist, read_idx, write_idx
from ddpm_core.data.spec import DataOptions, dataset_kind, load_training_data

__all__ = [
    "CheckerboardData",
    "DataOptions",
    "DatasetError",
    "ImageData",
    "MNIST_CLASS_NAMES",
    "TrainingData",
    "checkerboard_fraction_on_black",
    "dataset_kind",
    "load_image_folder",
    "load_mnist",
    "load_mnist_data",
    "load_npy_data",
    "load_training_data",
    "read_idx",
    "write_idx",
]
