"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ddpm_core.data.datasets import TrainingData
from ddpm_core.pipeline import generate
from ddpm_core.render import save_grid, save_scatter
from ddpm_core.samplers import DDIMSampler
from ddpm_core.schedule import NoiseSchedule


def make_sample_writer(
    data: TrainingData, schedule: NoiseSchedule, steps: int = 50
) -> Callable[[nn.Module, int, Path], None]:
    """A trainer hook writing ``samples/step_N.png``: a row per class (or 64 samples), or a
    scatter of 2000 points for the 2D toy, drawn with DDIM from the EMA model."""

    def write(model: nn.Module, step: int, directory: Path) -> None:
        """Draw from ``model`` and write ``directory/step_N.png``; restores the model's train mode."""
        was_training = model.training
        model.eval()
        sampler = DDIMSampler(schedule)
        sampler.set_timesteps(min(steps, schedule.num_train_timesteps))
        num_classes = len(data.class_names)
        if data.sample_shape == (2,):
            points = generate(model, sampler, sample_shape=(2,), num_samples=2000, seed=0)
            save_scatter(points, directory / f"step_{step:07d}.png")
        else:
            labels = [label for label in range(num_classes) for _ in range(8)] if num_classes else None
            samples = generate(
                model,
                sampler,
                sample_shape=data.sample_shape,
                num_samples=len(labels) if labels else 64,
                class_labels=labels,
                guidance_scale=1.0 if num_classes else 0.0,
                seed=0,
            )
            save_grid(samples, directory / f"step_{step:07d}.png", columns=8)
        model.train(was_training)

    return write
