"""MNIST from its four standard IDX files (``*-ubyte.gz`` or raw), downloaded when missing."""

from __future__ import annotations

import gzip
import hashlib
import logging
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ddpm_core.atomic import atomic_path
from ddpm_core.data.mnist_source import DEFAULT_MIRRORS as MNIST_MIRRORS
from ddpm_core.data.mnist_source import MNIST_CLASS_NAMES, MNIST_FILES  # noqa: F401
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)

# MD5 checksums of the gzipped files as published.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

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


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _download(directory: Path, stem: str) -> Path:
    name = stem + ".gz"
    target = directory / name
    errors = []
    for mirror in MNIST_MIRRORS:
        try:
            logger.info("downloading %s%s", mirror, name)
            with urllib.request.urlopen(mirror + name, timeout=30) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{mirror}: {error}")
            continue
        if hashlib.md5(payload).hexdigest() != MNIST_MD5[name]:
            errors.append(f"{mirror}: checksum mismatch")
            continue
        with atomic_path(target) as temporary:
            temporary.write_bytes(payload)
        return target
    raise DatasetError(f"{stem} is not in {directory} and could not be downloaded ({'; '.join(errors)})")


def load_mnist(data_dir: str | Path, split: str = "train", download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split ('train' or 'test').

    Files are looked up in ``data_dir`` as ``<name>.gz`` or raw ``<name>``; when missing and
    ``download`` is set they are fetched and their checksums verified.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"unknown MNIST split {split!r}; expected 'train' or 'test'")
    directory = Path(data_dir)
    arrays = {}
    for kind in ("images", "labels"):
        stem = MNIST_FILES[(split, kind)]
        path = _find(directory, stem)
        if path is None:
            if not download:
                raise DatasetError(f"{stem}(.gz) not found in {directory}")
            path = _download(directory, stem)
        arrays[kind] = read_idx(path)
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"MNIST {split} files in {directory} disagree: images {images.shape}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"MNIST {split} labels outside 0-9 in {directory}")
    return np.ascontiguousarray(images), labels.astype(np.int64)
