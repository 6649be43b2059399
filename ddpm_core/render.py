"""Rendering samples: PNG grids, denoising GIFs, and scatter plots for the 2D toy.

Images arrive as tensors (B, C, H, W) in [-1, 1]; points as (B, 2) in the toy's [-1, 1] space.
Everything here works on host copies; :class:`FrameRecorder` decides which steps to copy.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, ImageDraw

from ddpm_core.pipeline import StepInfo


def to_uint8_images(samples: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    images = ((samples.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


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


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode an image array (H, W, C) uint8 as PNG."""
    buffer = io.BytesIO()
    _to_pil(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


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
    sample beside the predicted clean x_0.
    """

    def __init__(
        self, total_steps: int, num_frames: int = 40, show_prediction: bool = True, columns: int | None = None
    ) -> None:
        self.steps = set(frame_steps(total_steps, num_frames))
        self.show_prediction = show_prediction
        self.columns = columns
        self.frames: list[np.ndarray] = []

    def __call__(self, info: StepInfo) -> None:
        if info.step not in self.steps:
            return
        grid = make_grid(info.sample, self.columns)
        if self.show_prediction:
            prediction = make_grid(info.pred_original_sample, self.columns)
            gap = np.full((grid.shape[0], 6, grid.shape[2]), 255, np.uint8)
            grid = np.concatenate([grid, gap, prediction], axis=1)
        self.frames.append(grid)


def gif_bytes(frames: Sequence[np.ndarray], frame_ms: int = 80, hold_last_ms: int = 1500, scale: int = 1) -> bytes:
    """Encode frames (H, W, C) uint8 as a looping GIF, holding the final frame."""
    if not frames:
        raise ValueError("no frames to encode")
    frames = [frame.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else frame for frame in frames]
    stacked = np.stack([frame[..., 0] if frame.shape[-1] == 1 else frame for frame in frames])
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    return iio.imwrite("<bytes>", stacked, extension=".gif", duration=durations, loop=0)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, **options: int) -> Path:
    """Write frames (H, W, C) uint8 as a GIF to ``path``; ``options`` as for :func:`gif_bytes`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, **options))
    return path


# ---------------------------------------------------------------------- the 2D toy
def scatter_image(points: torch.Tensor | np.ndarray, size: int = 512, board: bool = True) -> np.ndarray:
    """Draw points (N, 2) in [-1, 1]^2 over the faint 4x4 board; uint8 (size, size, 3)."""
    points = np.asarray(points.detach().cpu() if torch.is_tensor(points) else points, dtype=np.float64)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell = size / 4
    if board:
        for i in range(4):
            for j in range(4):
                if (i + j) % 2 == 0:  # floor(x) + floor(y) even: the squares samples should cover
                    x0, y0 = i * cell, size - (j + 1) * cell
                    draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=(225, 225, 225))
    pixels = (points * 2.0 + 2.0) * cell  # toy space -> board [0, 4] -> pixels
    for x, y in pixels:
        px, py = x, size - y
        if -2 <= px <= size + 2 and -2 <= py <= size + 2:
            draw.ellipse((px - 1.2, py - 1.2, px + 1.2, py + 1.2), fill=(20, 60, 160))
    return np.asarray(image)


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
