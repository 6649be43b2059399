"""A folder of images as training data: one subfolder per class, or a flat folder (unconditional).

Layout:

- ``ROOT/<class>/...`` (images anywhere below each class folder): class-conditional, the class
  names being the sorted names of the subfolders that hold images;
- ``ROOT/*.png``: a flat folder, unconditional (no classes).

Images both at the top and in subfolders is an error (which did you mean?). Files that are not
images (by suffix) and hidden files and folders (names starting with '.') are ignored.

Size: with ``image_size`` every image is centre-cropped to a square and resized to it (bicubic);
without, every image must have the same square size, which becomes the sample size (two images
of different sizes are named in the error).

Colour: with ``channels`` (1 or 3) every image is converted to grey or RGB; without, the data is
grey (1 channel) when every image is grey (PIL modes 1, L, LA, I, I;16, F) and RGB (3) otherwise,
so a folder of mixed photos is never half grey. An alpha channel is dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ddpm_core.data.datasets import ImageData
from ddpm_core.data.resize import centre_square
from ddpm_core.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# what PIL raises for an unreadable, truncated or corrupt image (UnidentifiedImageError is an OSError)
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def find_images(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``root`` (sorted), their labels, and the class names ([] for a flat folder).

    Raises:
        DatasetError: ``root`` is not a folder, holds no images, or holds images both at its top
            level and in subfolders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    top = sorted(path for path in root.iterdir() if _is_image(path))
    classes = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        files = sorted(path for path in folder.rglob("*") if _is_image(path) and not _hidden(path.relative_to(folder)))
        if files:
            classes.append((folder.name, files))
    if top and classes:
        raise DatasetError(
            f"{root} holds images both at its top level ({top[0].name}) and in subfolders ({classes[0][0]}/): "
            "use one subfolder per class, or a flat folder for unconditional data"
        )
    if top:
        return top, [0] * len(top), []
    if not classes:
        raise DatasetError(f"no images found in {root} (expected {root}/<class>/<image> or {root}/<image>)")
    paths = [path for _, files in classes for path in files]
    labels = [label for label, (_, files) in enumerate(classes) for _ in files]
    return paths, labels, [name for name, _ in classes]


def load_image_folder(root: str | Path, image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Images under ``root`` as an :class:`ImageData` of uint8 (N, C, S, S); see the module docstring.

    Raises:
        DatasetError: no images, an unreadable or corrupt image (named), sizes that differ or
            are not square without ``image_size``, or a bad ``channels``.
    """
    from PIL import Image

    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 or 3 for an image folder, got {channels}")
    if image_size is not None and image_size < 1:
        raise DatasetError(f"image size must be positive, got {image_size}")
    paths, labels, class_names = find_images(root)

    # first pass, headers only: sizes and colour modes, so that a bad folder fails before decoding
    sizes: dict[tuple[int, int], Path] = {}
    all_grey = True
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
                all_grey = all_grey and image.mode in GREY_MODES
        except (*_READ_ERRORS, Image.DecompressionBombError) as error:
            raise DatasetError(f"cannot read image {path}: {error}") from None
    if image_size is None:
        if len(sizes) > 1:
            (size_a, path_a), (size_b, path_b) = list(sizes.items())[:2]
            raise DatasetError(
                f"images differ in size: {path_a} is {size_a[0]}x{size_a[1]}, {path_b} is {size_b[0]}x{size_b[1]}; "
                "give --image-size N to crop and resize them all to N x N"
            )
        (width, height), path = next(iter(sizes.items()))
        if width != height:
            raise DatasetError(
                f"images are {width}x{height} (e.g. {path}), not square; give --image-size N to crop and resize them"
            )
        image_size = width
    if channels is None:
        channels = 1 if all_grey else 3

    images = np.empty((len(paths), channels, image_size, image_size), np.uint8)
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                rows, columns = centre_square(image.height, image.width)
                if image.size != (image_size, image_size):
                    image = image.crop((columns.start, rows.start, columns.stop, rows.stop))
                    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
                array = np.asarray(image, dtype=np.uint8)
        except (*_READ_ERRORS, Image.DecompressionBombError) as error:
            raise DatasetError(f"cannot read image {path}: {error}") from None
        images[index] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    logger.info(
        "loaded %d images (%s) from %s: %d x %d, %d channel(s)",
        len(paths),
        f"{len(class_names)} classes" if class_names else "unconditional",
        root,
        image_size,
        image_size,
        channels,
    )
    return ImageData(f"folder:{root}", images, np.asarray(labels, np.int64), class_names)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
