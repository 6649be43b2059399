"""Training end to end: exact resume, the 2D checkerboard, and a tiny U-Net on a few digits."""

import json

import numpy as np
import pytest
import torch

from ddpm_core import DDPMSampler, NoiseSchedule, UNet, UNetConfig, generate
from ddpm_core.data import CheckerboardData, checkerboard_fraction_on_black, load_mnist_data
from ddpm_core.models import MLPConfig, MLPDenoiser
from ddpm_core.samplers import make_sampler
from ddpm_core.training import TrainConfig, Trainer
from tests.core.conftest import write_mnist_like

TINY_UNET = UNetConfig(
    image_size=28,
    base_channels=8,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(7,),
    num_classes=10,
    norm_groups=4,
    dropout=0.0,
)


def make_trainer(run_dir, data, steps, **overrides):
    torch.manual_seed(0)
    config = TrainConfig(
        **{
            "max_steps": steps,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "warmup_steps": 2,
            "checkpoint_every": 5,
            "log_every": 5,
            **overrides,
        }
    )
    return Trainer(
        UNet(TINY_UNET),
        NoiseSchedule.linear(50, scale_to_length=True),
        data,
        config,
        run_dir,
        device="cpu",
        progress=False,
    )


def test_resume_is_exact(tmp_path):
    """6 steps straight equal 3 + 3 resumed: the split is past the warm-up (2 steps) and in the middle
    of the second pass over the 9 images (batches of 8), so the step, the learning-rate schedule, the
    data order and the random generators must all come back."""
    data_dir = write_mnist_like(tmp_path / "mnist", [0, 1, 7], copies=3)
    straight = make_trainer(tmp_path / "straight", load_mnist_data(data_dir), 6)
    straight.train()
    first = make_trainer(tmp_path / "split", load_mnist_data(data_dir), 3)
    first.train()
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    second = make_trainer(tmp_path / "split", load_mnist_data(data_dir), 6)
    second.resume()
    assert second.step == 3
    second.train()
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    for name, tensor in straight.ema.shadow.state_dict().items():
        torch.testing.assert_close(second.ema.shadow.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.e2e  # trains a real model: 2500 steps
def test_checkerboard_trains_end_to_end(tmp_path):
    """A small MLP learns the board: at least 90% of 2000 samples land on black squares."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    schedule = NoiseSchedule.cosine(100)
    model = MLPDenoiser(MLPConfig(hidden_dim=128, num_layers=3))
    config = TrainConfig(
        max_steps=2500,
        batch_size=256,
        learning_rate=2e-3,
        warmup_steps=100,
        lr_schedule="cosine",
        ema_decay=0.995,
        checkpoint_every=10**9,
        log_every=500,
    )
    trainer = Trainer(model, schedule, CheckerboardData(), config, tmp_path / "run", device="cpu", progress=False)
    trainer.train()
    samples = generate(trainer.ema.shadow.eval(), DDPMSampler(schedule), sample_shape=(2,), num_samples=2000, seed=0)
    fraction = checkerboard_fraction_on_black(samples)
    assert fraction >= 0.90, f"only {fraction:.1%} of samples on black squares"
    # and it covers the whole board, not a few squares
    cells = torch.floor(samples * 2 + 2).clamp(0, 3).long()
    occupied = {(int(x), int(y)) for x, y in cells.tolist()}
    assert len(occupied & {(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0}) == 8


@pytest.mark.e2e  # trains a real model: 600 steps of a U-Net
def test_tiny_unet_fits_a_few_digits(tmp_path):
    """Trained on three shapes written as IDX files, the model draws each class close to its own image."""
    torch.set_num_threads(1)
    data = load_mnist_data(write_mnist_like(tmp_path / "mnist", [0, 1, 7], copies=1))
    trainer = make_trainer(
        tmp_path / "run",
        data,
        600,
        batch_size=12,
        learning_rate=3e-3,
        warmup_steps=20,
        checkpoint_every=10**9,
        log_every=100,
        ema_decay=0.98,
    )
    trainer.train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]
    # 8 samples per class, their distances averaged: one sample per class made the ratios below
    # swing between 0.4 and 0.8 with the training's random draws alone
    samples = generate(
        trainer.ema.shadow.eval(),
        make_sampler("ddim", trainer.schedule, 25),
        sample_shape=(1, 28, 28),
        class_labels=[digit for digit in (0, 1, 7) for _ in range(8)],
        guidance_scale=2.0,
        seed=0,
    )
    targets = data.images[:3].float() / 127.5 - 1  # digits 0, 1, 7 in order
    distances = torch.cdist(samples.flatten(1), targets.flatten(1)).numpy()  # (24 samples, 3 targets)
    distances = distances.reshape(3, 8, 3).mean(axis=1)  # (3 classes, 3 targets)
    assert distances.argmin(axis=1).tolist() == [0, 1, 2], distances
    off_diagonal = distances[~np.eye(3, dtype=bool)].mean()
    assert np.diag(distances).mean() < 0.7 * off_diagonal, distances
    noise = torch.randn(3, 784, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    assert np.diag(distances).max() < 0.6 * torch.cdist(noise, targets.flatten(1)).diagonal().mean().item()
