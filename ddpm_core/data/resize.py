"""Resizing and converting whole image arrays: a centre square crop and a bilinear resize, and the
mapping of float pixels in [0, 1] or [-1, 1] to 8 bits.

Arrays are processed in chunks so that a large data set (possibly a memory-mapped .npy file)
never needs more than its uint8 result plus one chunk in memory.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 1024  # images per chunk


def centre_square(height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of the largest centred square of a height x width image."""
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return slice(top, top + side), slice(left, left + side)


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 images (N, C, H, W) to a square and resize them to (N, C, size, size).

    Bilinear with antialiasing (what torchvision's ``Resize`` does), so 28 -> 32 upsamples
    smoothly and large images shrink without aliasing. Returns a new uint8 array.
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    count, channels, height, width = images.shape
    rows, columns = centre_square(height, width)
    out = np.empty((count, channels, size, size), np.uint8)
    for start in range(0, count, CHUNK):
        chunk = torch.from_numpy(np.array(images[start : start + CHUNK, :, rows, columns], dtype=np.float32))
        if chunk.shape[-1] != size:
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def float_range(images: np.ndarray) -> tuple[float, float]:
    """The minimum and maximum of a float array, read in chunks; ValueError when it holds NaN or infinity."""
    low, high = np.inf, -np.inf
    for start in range(0, len(images), CHUNK):
        chunk = np.asarray(images[start : start + CHUNK])
        if not np.isfinite(chunk).all():
            raise ValueError("holds NaN or infinite values")
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    return low, high


def to_uint8(chunk: np.ndarray, low: float) -> np.ndarray:
    """Pixels to uint8: integers pass through; floats are [0, 1] when ``low`` is 0, else [-1, 1] (``low`` -1)."""
    if chunk.dtype.kind in "ui":
        return chunk.astype(np.uint8)
    values = (chunk.astype(np.float64) - low) * (255.0 / (1.0 - low))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
