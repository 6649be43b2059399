"""Images and labels from ``.npy`` arrays (``--dataset npy:IMAGES.npy[,LABELS.npy]``).

Images: (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4 (the channel axis is the one of those
two whose size is 1, 3 or 4; when both are, the layout whose other two axes are square wins), or
(N, H, W) for grey images. Pixels are uint8 0..255 (other integer types must lie in 0..255) or
float: a float array whose minimum is below -0.001 is read as [-1, 1], otherwise as [0, 1]; one
outside [-1.001, 1.001] is refused (float 0..255 data should be saved as uint8). Either way the
images are held as uint8 and handed to training in [-1, 1]: float pixels are rounded to 1/255.

Labels: class indices (N,) of an integer type (or integral floats), or one-hot rows (N, K).
Class names are ``class_names`` (one per class: K of them for one-hot rows, more than the
largest index otherwise) or '0', '1', ... Without a labels file the data is unconditional.

Files are opened memory-mapped and converted in chunks, so a big float file never sits in
memory whole: only its uint8 copy does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddpm_core.data.datasets import ImageData
from ddpm_core.data.resize import CHUNK, float_range, resize_square, to_uint8
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)

CHANNEL_COUNTS = (1, 3, 4)
RANGE_TOLERANCE = 1e-3


def open_npy(path: str | Path) -> np.ndarray:
    """A ``.npy`` array opened memory-mapped (read-only); DatasetError when it is missing or not a plain array."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"{path} is not a .npy array: {str(error).splitlines()[0]}") from None
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path} is an .npz archive, not a .npy array")
    return array


def channel_layout(shape: tuple[int, ...], path: Path) -> str:
    """'NHWC', 'NCHW' or 'NHW' for an image array's shape; DatasetError when it is neither."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DatasetError(
            f"{path}: images must be (N, H, W, C), (N, C, H, W) or (N, H, W), got shape {tuple(shape)} "
            f"(rank {len(shape)})"
        )
    last, first = shape[3] in CHANNEL_COUNTS, shape[1] in CHANNEL_COUNTS
    if last and first:  # e.g. (N, 3, 4, 4) or (N, 4, 4, 3): the square pair is the image
        last, first = shape[1] == shape[2], shape[2] == shape[3]
    if last != first:
        return "NHWC" if last else "NCHW"
    raise DatasetError(
        f"{path}: cannot tell the channel axis of shape {tuple(shape)}: "
        f"expected (N, H, W, C) or (N, C, H, W) with C in {', '.join(map(str, CHANNEL_COUNTS))}"
    )


def read_images(path: str | Path) -> np.ndarray:
    """The images of a ``.npy`` file as uint8 (N, C, H, W); see the module docstring for what is accepted."""
    path = Path(path)
    array = open_npy(path)
    layout = channel_layout(array.shape, path)
    if array.shape[0] == 0:
        raise DatasetError(f"{path} holds no images")
    kind = array.dtype.kind
    if kind == "f":
        try:
            low, high = float_range(array)
        except ValueError as error:
            raise DatasetError(f"{path} {error}") from None
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise DatasetError(
                f"{path}: float pixels must lie in [0, 1] or [-1, 1], found [{low:.4g}, {high:.4g}] "
                "(save 0..255 pixels as uint8)"
            )
        offset = -1.0 if low < -RANGE_TOLERANCE else 0.0
        logger.info("%s: float pixels in [%.3g, %.3g], read as [%d, 1]", path, low, high, offset)
    elif kind in "ui":
        offset = 0.0
        if array.dtype != np.uint8:
            low, high = float_range(array)
            if low < 0 or high > 255:
                raise DatasetError(f"{path}: integer pixels must lie in 0..255, found {low:.0f}..{high:.0f}")
    else:
        raise DatasetError(f"{path}: pixels must be uint8 or float, not {array.dtype}")
    if layout == "NHW":
        height, width, channels = array.shape[1], array.shape[2], 1
    elif layout == "NHWC":
        height, width, channels = array.shape[1], array.shape[2], array.shape[3]
    else:
        channels, height, width = array.shape[1], array.shape[2], array.shape[3]
    images = np.empty((array.shape[0], channels, height, width), np.uint8)
    for start in range(0, len(array), CHUNK):
        chunk = to_uint8(np.asarray(array[start : start + CHUNK]), offset)
        if layout == "NHW":
            chunk = chunk[:, None]
        elif layout == "NHWC":
            chunk = chunk.transpose(0, 3, 1, 2)
        images[start : start + CHUNK] = chunk
    return images


def read_labels(path: str | Path, count: int, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Labels (N,) int64 and the class names, from class indices (N,) or one-hot rows (N, K).

    Raises:
        DatasetError: a count other than ``count``, a bad rank, a row that is not one-hot, a
            negative or non-integral index, or class names that do not fit the labels.
    """
    path = Path(path)
    array = np.asarray(open_npy(path))
    if array.ndim not in (1, 2):
        raise DatasetError(f"{path}: labels must be class indices (N,) or one-hot rows (N, K), got shape {array.shape}")
    if len(array) != count:
        raise DatasetError(f"{path} has {len(array)} labels for {count} images")
    if array.dtype.kind not in "uifb":
        raise DatasetError(f"{path}: labels must be numbers, not {array.dtype}")
    if array.ndim == 2:
        one_hot = ((array == 0) | (array == 1)).all(axis=1) & (array.sum(axis=1) == 1)
        if not one_hot.all():
            row = int(np.argmin(one_hot))
            raise DatasetError(f"{path}: row {row} is not one-hot: {np.array2string(array[row], threshold=12)}")
        labels, num_classes = array.argmax(axis=1).astype(np.int64), array.shape[1]
        if class_names is not None and len(class_names) != num_classes:
            raise DatasetError(
                f"--class-names gives {len(class_names)} names for the {num_classes} classes of {path} (one-hot)"
            )
    else:
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise DatasetError(f"{path}: class indices must be whole numbers")
        labels = array.astype(np.int64)
        if len(labels) and labels.min() < 0:
            raise DatasetError(f"{path}: class indices must be >= 0, found {labels.min()}")
        num_classes = int(labels.max()) + 1 if len(labels) else 0
        if class_names is not None:
            if len(class_names) < num_classes:
                raise DatasetError(
                    f"--class-names gives {len(class_names)} names but {path} has class index {num_classes - 1}"
                )
            num_classes = len(class_names)
    names = [str(index) for index in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    return labels, names


def load_npy_data(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    *,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageData:
    """Images (and labels) from ``.npy`` files as an :class:`ImageData`; see the module docstring.

    ``image_size``: resize (centre square crop, bilinear) to this size; default the images' own,
    which must then be square. ``channels``: checked against the images' channel count.
    """
    if class_names is not None and labels_path is None:
        raise DatasetError("--class-names needs a labels file: npy:IMAGES.npy,LABELS.npy")
    if class_names is not None and (
        len(set(class_names)) != len(class_names) or not all(str(name).strip() for name in class_names)
    ):
        raise DatasetError(f"class names must be distinct and non-empty, got {','.join(class_names)}")
    images = read_images(images_path)
    count, found_channels, height, width = images.shape
    if channels is not None and channels != found_channels:
        raise DatasetError(f"--channels {channels} does not match the {found_channels} channel(s) of {images_path}")
    if image_size is None and height != width:
        raise DatasetError(
            f"{images_path}: images are {height}x{width} (H x W), not square; give --image-size N to crop and resize"
        )
    if image_size is not None and (height, width) != (image_size, image_size):
        images = resize_square(images, image_size)
        logger.info("resized %s from %dx%d to %dx%d (bilinear)", images_path, height, width, image_size, image_size)
    if labels_path is None:
        labels, names = np.zeros(count, np.int64), []
    else:
        labels, names = read_labels(labels_path, count, class_names)
    logger.info(
        "loaded %d images %s from %s%s",
        count,
        tuple(images.shape[1:]),
        images_path,
        f" in {len(names)} classes ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else "",
    )
    return ImageData(f"npy:{images_path}", images, labels, names)
