import io

import numpy as np
import torch
from PIL import Image

from ddpm_core.pipeline import StepInfo
from ddpm_core.render import FrameRecorder, ScatterRecorder, frame_steps, gif_bytes, make_grid, png_bytes


def test_grid_layout():
    samples = torch.linspace(-1, 1, 10 * 28 * 28).reshape(10, 1, 28, 28)
    grid = make_grid(samples, padding=2)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2, 1)  # 10 images -> 4 columns, 3 rows
    image = Image.open(io.BytesIO(png_bytes(grid)))
    assert image.size == (122, 92)
    np.testing.assert_array_equal(grid[2:30, 2:30, 0], make_grid(samples[:1], padding=0)[..., 0])


def test_frame_steps_are_denser_at_the_end():
    steps = frame_steps(1000, 40)
    assert steps[-1] == 1000 and len(steps) == len(set(steps)) and 30 <= len(steps) <= 40
    first_half = sum(1 for s in steps if s <= 500)
    assert first_half < len(steps) - first_half
    assert frame_steps(5, 40) == [1, 2, 3, 4, 5]


def test_gif_decodes_with_expected_frames():
    total = 100
    recorder = FrameRecorder(total, num_frames=12)
    for step in range(1, total + 1):
        x = torch.full((4, 1, 8, 8), -1 + 2 * step / total)
        recorder(StepInfo(step, total, total - step, x, x))
    expected = len(frame_steps(total, 12))
    assert len(recorder.frames) == expected
    gif = Image.open(io.BytesIO(gif_bytes(recorder.frames)))
    assert gif.n_frames == expected
    assert gif.info.get("loop") == 0
    gif.seek(expected - 1)
    assert gif.info["duration"] > 500  # the final frame is held
    points = ScatterRecorder(10, num_frames=5, size=64)
    for step in range(1, 11):
        spread = torch.linspace(-1, 1, 5)[:, None] * step / 10 * torch.ones(5, 2)
        points(StepInfo(step, 10, 10 - step, spread, spread))
    assert Image.open(io.BytesIO(gif_bytes(points.frames))).n_frames == 5


def test_a_grid_from_host_uint8_images_equals_the_grid_from_the_tensor() -> None:
    import numpy as np
    import torch

    from ddpm_core.render import make_grid, to_uint8_images

    samples = torch.rand(5, 1, 28, 28) * 2 - 1
    host = to_uint8_images(samples)
    assert host.dtype == np.uint8 and host.shape == (5, 28, 28, 1)
    assert np.array_equal(make_grid(host, scale=2), make_grid(samples, scale=2))
