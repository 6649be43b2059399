"""Rendering samples: PNG grids, denoising GIFs, and scatter plots for the 2D toy.

Images arrive as tensors (B, C, H, W) in [-1, 1]; points as (B, 2) in the toy's [-1, 1] space.
Everything here works on host copies; :class:`FrameRecorder` decides which steps to copy.

Large grids are shrunk, never cropped: :func:`fit_within` downscales an image with a Lanczos
filter so its longer side stays within a bound (a recorder does it as it captures each frame, so
a job of 64 RGB images of 64 x 64 keeps 40 small frames, not 68 MB of full ones), and
:func:`bounded_png` shrinks an image until its PNG fits a byte budget (the service's previews).
Small grids are shown larger by whole pixels (:func:`display_scale`), so 28 x 28 digits stay crisp.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_core.pipeline import StepInfo


def uint8_pixels(samples: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 on the samples' device, as a PNG stores them."""
    images = ((samples.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous()


def to_uint8_images(samples: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 host images."""
    return uint8_pixels(samples).cpu().numpy()


def grid_columns(count: int) -> int:
    """Columns of a near-square grid for ``count`` images."""
    return max(1, math.ceil(math.sqrt(count)))


def make_grid(
    samples: torch.Tensor | np.ndarray, columns: int | None = None, padding: int = 2, scale: int = 1
) -> np.ndarray:
    """Tile images into one (rows, columns) grid, uint8 (H', W', C).

    ``samples`` is a tensor (B, C, H, W) in [-1, 1], or host images already converted by
    :func:`to_uint8_images`, uint8 (B, H, W, C): a thread that must not run torch ops (they
    would start a thread pool of their own beside the one doing the sampling) passes those.
    """
    images = samples if isinstance(samples, np.ndarray) else to_uint8_images(samples)
    count, height, width, channels = images.shape
    columns = columns or grid_columns(count)
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[top : top + height, left : left + width] = image
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


DISPLAY_SIDE = 512  # a grid is upscaled by whole pixels while its longer side stays within this


def display_scale(shape: Sequence[int], largest: int = 2, target: int = DISPLAY_SIDE) -> int:
    """The integer upscale (1 to ``largest``) to show a grid of ``shape`` (H, W, ...) with: the
    largest that keeps its longer side within ``target`` pixels (2 for 64 MNIST digits, 1 for 64
    images of 64 x 64)."""
    return max(1, min(largest, target // max(shape[0], shape[1])))


def fit_within(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale an image (H, W, C) uint8 so its longer side is at most ``max_side`` pixels.

    A Lanczos filter, the aspect ratio kept; an image that fits (or ``max_side`` None) is
    returned as is, never upscaled. Returns uint8 (H', W', C)."""
    if max_side is None:
        return image
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    ratio = max_side / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    resized = np.asarray(_to_pil(image).resize(size, Image.Resampling.LANCZOS))
    return resized[..., None] if resized.ndim == 2 else resized


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an image array (H, W, C) uint8 as PNG."""
    buffer = io.BytesIO()
    _to_pil(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def bounded_png(image: np.ndarray, max_bytes: int, max_side: int | None = None) -> bytes:
    """PNG of an image (H, W, C) uint8 in at most ``max_bytes``: first fitted within ``max_side``
    (:func:`fit_within`), then shrunk by a quarter at a time until its PNG fits. An image that
    already fits comes back pixel for pixel."""
    image = fit_within(image, max_side)
    while True:
        data = png_bytes(image)
        side = max(image.shape[:2])
        if len(data) <= max_bytes or side <= 8:
            return data
        image = fit_within(image, max(8, side * 3 // 4))


def save_grid(samples: torch.Tensor, path: str | Path, columns: int | None = None, scale: int = 2) -> Path:
    """Write a PNG grid of ``samples`` (B, C, H, W) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(make_grid(samples, columns, scale=scale)))
    return path


def frame_steps(total: int, num_frames: int, power: float = 2.0) -> list[int]:
    """Which of the 1-based steps 1..total to show: about ``num_frames`` steps from the first
    (nearly pure noise) to the last, denser near the end where the image forms
    (step = total * u**(1/power) for evenly spaced u)."""
    if num_frames >= total:
        return list(range(1, total + 1))
    positions = np.linspace(0.0, 1.0, max(num_frames, 2)) ** (1.0 / power)
    return sorted({max(1, min(total, int(round(total * p)))) for p in positions} | {1, total})


class FrameRecorder:
    """A generation callback that keeps host copies of chosen steps for a denoising GIF.

    Each frame is the grid of the current sample x_t, or, with ``show_prediction``, the noisy
    sample beside the predicted clean x_0. With ``max_side``, each grid is shrunk as it is
    captured to at most that many pixels on its longer side (:func:`fit_within`), so only small
    frames are kept; without, frames are kept at full size.
    """

    def __init__(
        self,
        total_steps: int,
        num_frames: int = 40,
        show_prediction: bool = True,
        columns: int | None = None,
        max_side: int | None = None,
    ) -> None:
        self.steps = set(frame_steps(total_steps, num_frames))
        self.show_prediction = show_prediction
        self.columns = columns
        self.max_side = max_side
        self.frames: list[np.ndarray] = []

    def __call__(self, info: StepInfo) -> None:
        if info.step not in self.steps:
            return
        grid = fit_within(make_grid(info.sample, self.columns), self.max_side)
        if self.show_prediction:
            prediction = fit_within(make_grid(info.pred_original_sample, self.columns), self.max_side)
            gap = np.full((grid.shape[0], 6, grid.shape[2]), 255, np.uint8)
            grid = np.concatenate([grid, gap, prediction], axis=1)
        self.frames.append(grid)

    @property
    def nbytes(self) -> int:
        """Bytes held by the frames kept so far."""
        return sum(frame.nbytes for frame in self.frames)


def gif_bytes(frames: Sequence[np.ndarray], frame_ms: int = 80, hold_last_ms: int = 1500, scale: int = 1) -> bytes:
    """Encode frames (H, W, C) uint8 as a looping GIF, holding the final frame.

    Grey frames keep their 256 levels; colour frames are reduced to 256 colours each with PIL's
    fast octree and dithered (median cut, imageio's default, took 3.2 s for 40 frames of 256 x 518
    on a 2-core CPU; this takes 0.25 s)."""
    if not frames:
        raise ValueError("no frames to encode")
    images = [_gif_frame(frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame) for frame in frames]
    durations = [frame_ms] * (len(images) - 1) + [hold_last_ms]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


def _gif_frame(frame: np.ndarray) -> Image.Image:
    """A frame (H, W, C) uint8 as a GIF frame: grey as is; colour mapped to its own 256-colour palette
    (fast octree) with Floyd-Steinberg dithering, so smooth gradients do not band."""
    if frame.shape[-1] == 1:
        return Image.fromarray(frame[..., 0])
    image = Image.fromarray(frame)
    palette = image.quantize(256, method=Image.Quantize.FASTOCTREE)
    return image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, **options: int) -> Path:
    """Write frames (H, W, C) uint8 as a GIF to ``path``; ``options`` as for :func:`gif_bytes`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, **options))
    return path


# ---------------------------------------------------------------------- the 2D toy
BOARD_SQUARE = (225, 225, 225)
POINT_COLOUR = (20, 60, 160)
# each point is a small plus: its pixel and the four next to it
_POINT_OFFSETS = np.array([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)], dtype=np.int64)


def scatter_image(points: torch.Tensor | np.ndarray, size: int = 512, board: bool = True) -> np.ndarray:
    """Draw points (N, 2) in [-1, 1]^2 over the faint 4x4 board; uint8 (size, size, 3).

    Drawn with array indexing, not a loop over points, so 10,000 points take milliseconds; points
    off the image (or not finite) are left out."""
    points = np.asarray(points.detach().cpu() if torch.is_tensor(points) else points, dtype=np.float64)
    image = np.full((size, size, 3), 255, np.uint8)
    cell = size / 4
    if board:
        centres = np.arange(size) + 0.5
        column = np.floor(centres / cell).astype(np.int64)  # board x of each pixel column
        row = np.floor((size - centres) / cell).astype(np.int64)  # board y of each pixel row (y points up)
        black = (column[None, :] + row[:, None]) % 2 == 0  # floor(x) + floor(y) even: the squares samples cover
        image[black] = BOARD_SQUARE
    points = points.reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    pixels = (points * 2.0 + 2.0) * cell  # toy space -> board [0, 4] -> pixels
    pixels[:, 1] = size - pixels[:, 1]  # image rows grow downwards
    pixels = pixels[((pixels >= -2) & (pixels <= size + 2)).all(axis=1)]
    stamped = (np.floor(pixels).astype(np.int64)[:, None, :] + _POINT_OFFSETS[None]).reshape(-1, 2)
    stamped = stamped[((stamped >= 0) & (stamped < size)).all(axis=1)]
    image[stamped[:, 1], stamped[:, 0]] = POINT_COLOUR
    return image


def save_scatter(points: torch.Tensor, path: str | Path, size: int = 512) -> Path:
    """Write a PNG scatter of points (N, 2) in [-1, 1]^2 over the checkerboard to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(scatter_image(points, size)))
    return path


class ScatterRecorder(FrameRecorder):
    """Like :class:`FrameRecorder`, for points: each frame is a scatter of x_t."""

    def __init__(self, total_steps: int, num_frames: int = 40, size: int = 256) -> None:
        super().__init__(total_steps, num_frames, show_prediction=False)
        self.size = size

    def __call__(self, info: StepInfo) -> None:
        if info.step in self.steps:
            self.frames.append(scatter_image(info.sample, self.size))
