"""MNIST from its four standard IDX files (``*-ubyte.gz`` or raw); ``ddpm data fetch mnist`` downloads them."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np

from ddpm_core.data.mnist_source import find_mnist_files
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in .gz) into an array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_size != expected:
        raise DatasetError(
            f"{path}: expected {expected} bytes of data for shape {shape}, found {len(data) - header_size}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


def load_mnist(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split ('train' or 'test').

    The files are found by :func:`~ddpm_core.data.mnist_source.find_mnist_files` (``<name>.gz``
    or raw ``<name>`` in ``data_dir``); nothing is downloaded.

    Raises:
        DatasetError: the files are missing (the message names ``ddpm data fetch mnist``), or
            malformed or inconsistent.
    """
    directory = Path(data_dir)
    paths = find_mnist_files(directory, (split,))
    images, labels = read_idx(paths[(split, "images")]), read_idx(paths[(split, "labels")])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"MNIST {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"MNIST {split} labels outside 0-9 in {directory}")
    return np.ascontiguousarray(images), labels.astype(np.int64)
