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


# ------------------------------------------------------------------ bounded sizes


def test_fit_within_shrinks_with_a_filter_and_leaves_small_images_alone() -> None:
    from ddpm_core.render import fit_within

    stripes = np.zeros((530, 1066, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel columns: nearest-neighbour would keep pure black or white
    small = fit_within(stripes, 256)
    assert small.shape == (127, 256, 3) and small.dtype == np.uint8
    assert 96 <= small[10:-10, 10:-10].mean() <= 160 and small[10:-10, 10:-10].std() < 40  # filtered to grey
    grey = np.zeros((300, 200, 1), np.uint8)
    assert fit_within(grey, 100).shape == (100, 67, 1)
    digits = np.zeros((242, 242, 1), np.uint8)
    assert fit_within(digits, 256) is digits and fit_within(stripes, None) is stripes


def test_display_scale_upscales_only_small_grids() -> None:
    from ddpm_core.render import display_scale

    assert display_scale((122, 122, 1)) == 2  # 16 MNIST digits
    assert display_scale((242, 242, 1)) == 2  # 64 MNIST digits: as before
    assert display_scale((266, 266, 3)) == 1  # 16 images of 64 x 64
    assert display_scale((530, 530, 3)) == 1


def test_bounded_png_fits_its_budget_and_keeps_what_already_fits() -> None:
    from ddpm_core.render import bounded_png

    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert len(png_bytes(noise)) > 150_000  # noise does not compress
    data = bounded_png(noise, 64 * 1024)
    assert len(data) <= 64 * 1024
    assert max(Image.open(io.BytesIO(data)).size) < 256
    digits = make_grid(torch.rand(16, 1, 28, 28) * 2 - 1)
    assert bounded_png(digits, 64 * 1024, 256) == png_bytes(digits)  # pixel for pixel


def test_frames_are_shrunk_as_they_are_captured() -> None:
    total = 50
    full, bounded = FrameRecorder(total, num_frames=10), FrameRecorder(total, num_frames=10, max_side=128)
    for step in range(1, total + 1):
        x = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(step)) * 2 - 1
        info = StepInfo(step, total, total - step, x, x)
        full(info)
        bounded(info)
    assert full.frames[0].shape == (530, 530 + 6 + 530, 3)
    assert bounded.frames[0].shape == (128, 128 + 6 + 128, 3)
    assert len(bounded.frames) == len(full.frames) and bounded.nbytes * 16 < full.nbytes


def test_scatter_draws_points_and_the_board_fast() -> None:
    import time

    from ddpm_core.render import BOARD_SQUARE, POINT_COLOUR, scatter_image

    empty = scatter_image(np.zeros((0, 2)), 64)
    assert tuple(empty[56, 8]) == BOARD_SQUARE  # board square (0, 0), bottom left: black
    assert tuple(empty[56, 24]) == (255, 255, 255)  # square (1, 0): white
    assert tuple(empty[40, 24]) == BOARD_SQUARE  # square (1, 1)
    image = scatter_image(np.array([[-0.75, -0.75], [0.25, 0.75], [np.nan, 0.0], [9.0, 9.0]]), 64)
    assert tuple(image[56, 8]) == POINT_COLOUR and tuple(image[8, 40]) == POINT_COLOUR
    assert (image == POINT_COLOUR).all(axis=2).sum() == 10  # two plus-shaped dots; the others left out
    points = torch.rand(10_000, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    started = time.perf_counter()
    scatter_image(points, 512)
    print(f"scatter of 10,000 points at 512 px: {1000 * (time.perf_counter() - started):.1f} ms")
