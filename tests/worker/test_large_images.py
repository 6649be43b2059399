"""Large images on the worker: a job of 64 RGB images of 64 x 64 (an 8 x 8 grid of 530 x 530
pixels) keeps small GIF frames, encodes a GIF of at most 10 MB and sends previews of at most
64 KB, while MNIST grids come out as they did. Sizes are deterministic (seeded content); the
encoding time is printed, not asserted (run with -s to see it)."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import torch
from PIL import Image

from contract.settings import Settings
from ddpm_core.pipeline import StepInfo
from ddpm_core.render import FrameRecorder, gif_bytes, make_grid, png_bytes, to_uint8_images
from worker.engine.request_state import HostStep
from worker.progress import GIF_GRID_SIDE, PREVIEW_MAX_BYTES, JobChannel, preview_png
from worker.runner import result_png

GIF_MAX_BYTES = 10 * 1024 * 1024


def clean_images(n: int, channels: int, size: int) -> torch.Tensor:
    """Smooth, colourful images (n, C, S, S) in [-1, 1]: a different blob and gradient each."""
    generator = torch.Generator().manual_seed(1)
    axis = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    centres = torch.rand(n, channels, 2, generator=generator) * 1.2 - 0.6
    widths = 0.15 + torch.rand(n, channels, 1, 1, generator=generator) * 0.3
    blobs = torch.exp(
        -((x - centres[..., 0, None, None]) ** 2 + (y - centres[..., 1, None, None]) ** 2) / (2 * widths**2)
    )
    return (1.8 * blobs + 0.3 * x - 0.9).clamp(-1, 1)


def run_channel(n: int, channels: int, size: int, total: int, settings: Settings) -> tuple[JobChannel, list]:
    """Feed a JobChannel the steps of a denoising run from noise to ``clean_images``; the previews sent."""
    channel = JobChannel(total, is_points=False, settings=settings)
    plan = channel.plan()
    clean = clean_images(n, channels, size)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    for step in range(1, total + 1):
        keep = math.sin(0.5 * math.pi * step / total) ** 2  # the signal's share grows to 1
        want_sample, want_prediction = plan.captures(step, total)  # what the engine would copy to the host
        sample = prediction = None  # made only where captured: most steps copy nothing
        if want_sample:
            sample = to_uint8_images(math.sqrt(keep) * clean + math.sqrt(1 - keep) * noise)
        if want_prediction:
            prediction = to_uint8_images((clean + (1 - keep) * 0.5 * noise).clamp(-1, 1))
        channel.on_output(HostStep(step, total, total - step, sample, prediction))
    previews = [preview for _, preview in channel.take(timeout=0) if preview is not None]
    return channel, previews


def test_a_64px_rgb_job_of_64_images_keeps_small_frames_a_bounded_gif_and_small_previews() -> None:
    settings = Settings(gif_frames=40, preview_count=20)
    channel, previews = run_channel(64, 3, 64, 1000, settings)
    frames = channel.recorder.frames
    assert 30 <= len(frames) <= 40
    assert all(frame.shape == (GIF_GRID_SIDE, 2 * GIF_GRID_SIDE + 6, 3) for frame in frames)
    full_frame_bytes = 530 * (2 * 530 + 6) * 3
    kept, full = channel.recorder.nbytes / 2**20, len(frames) * full_frame_bytes / 2**20
    print(f"\nframes kept: {kept:.1f} MiB (at full size: {full:.1f} MiB)")
    assert channel.recorder.nbytes < 0.3 * len(frames) * full_frame_bytes  # not ~68 MB of full frames

    started = time.perf_counter()
    gif = gif_bytes(frames)
    seconds = time.perf_counter() - started
    print(f"\nGIF of {len(frames)} frames {frames[0].shape}: {len(gif) / 2**20:.2f} MiB in {seconds:.2f} s")
    assert len(gif) <= GIF_MAX_BYTES
    decoded = Image.open(io.BytesIO(gif))
    assert decoded.n_frames == len(frames) and decoded.size == (2 * GIF_GRID_SIDE + 6, GIF_GRID_SIDE)

    assert len(previews) == 19  # every 50 steps but the last
    sizes = [len(preview_png(preview, is_points=False)) for preview in previews]
    print(f"previews: largest {max(sizes) / 1024:.1f} KiB, smallest {min(sizes) / 1024:.1f} KiB")
    assert max(sizes) <= PREVIEW_MAX_BYTES
    first = Image.open(io.BytesIO(preview_png(previews[0], is_points=False)))
    assert max(first.size) <= 256 and first.mode == "RGB"

    final = Image.open(io.BytesIO(result_png(to_uint8_images(clean_images(64, 3, 64)), is_points=False)))
    assert final.size == (530, 530)  # the result keeps every pixel, not upscaled


def test_mnist_sized_grids_look_as_before() -> None:
    settings = Settings(gif_frames=12, preview_count=4)
    channel, previews = run_channel(64, 1, 28, 100, settings)
    reference = FrameRecorder(100, 12)  # full-size frames, as the worker kept them before
    clean = clean_images(64, 1, 28)
    for step in sorted(reference.steps):
        keep = math.sin(0.5 * math.pi * step / 100) ** 2
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
        sample = math.sqrt(keep) * clean + math.sqrt(1 - keep) * noise
        reference(StepInfo(step, 100, 100 - step, sample, (clean + (1 - keep) * 0.5 * noise).clamp(-1, 1)))
    assert len(channel.recorder.frames) == len(reference.frames)
    for ours, theirs in zip(channel.recorder.frames, reference.frames, strict=True):
        assert ours.shape == (242, 490, 1) and np.array_equal(ours, theirs)  # 64 digits: not shrunk
    assert all(preview_png(p, is_points=False) == png_bytes(make_grid(p)) for p in previews)
    digits = to_uint8_images(clean[:16])
    assert result_png(digits, is_points=False) == png_bytes(make_grid(digits, scale=2))  # upscaled 2x as before
    assert Image.open(io.BytesIO(result_png(to_uint8_images(clean), is_points=False))).size == (484, 484)
