"""Data sets: MNIST IDX files, folders of images and the 2D checkerboard."""

from ddpm_core.data.datasets import (
    CheckerboardData,
    ImageData,
    TrainingData,
    checkerboard_fraction_on_black,
    load_image_folder,
    load_mnist_data,
)
from ddpm_core.data.mnist import MNIST_CLASS_NAMES, DatasetError, load_mnist, read_idx, write_idx

__all__ = [
    "CheckerboardData",
    "DatasetError",
    "ImageData",
    "MNIST_CLASS_NAMES",
    "TrainingData",
    "checkerboard_fraction_on_black",
    "load_image_folder",
    "load_mnist",
    "load_mnist_data",
    "read_idx",
    "write_idx",
]
