"""Untrained checkpoints of every kind the library trains, written by the library's own
``save_checkpoint``: a digit model (``mnist``: 1x28x28, classes "0".."9"), a conditional RGB
model with named classes (``sprites``: 3x16x16), an unconditional RGB model (``flowers``:
3x64x64) and a 2D point model (``board``: checkerboard, sample shape (2,))."""

from __future__ import annotations

from pathlib import Path

SPRITE_CLASSES = ["hero", "non-hero", "food", "spell", "side-facing"]
TRAINING_STEPS = 1234


def _unet(image_size: int, in_channels: int, num_classes: int) -> object:
    import torch

    from ddpm_core.models import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(
        image_size=image_size,
        in_channels=in_channels,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        num_classes=num_classes,
        norm_groups=4,
    )
    return UNet(config)


def write_model_kinds(directory: Path) -> Path:
    """One checkpoint of each kind in ``directory`` (100 diffusion steps each)."""
    from ddpm_core.checkpoint import save_checkpoint
    from ddpm_core.models import MLPConfig, MLPDenoiser
    from ddpm_core.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(100)
    save_checkpoint(
        directory / "mnist.safetensors",
        _unet(28, 1, 10),
        schedule,
        class_names=[str(digit) for digit in range(10)],
        sample_shape=(1, 28, 28),
        dataset="mnist",
        training={"steps": TRAINING_STEPS, "default_guidance": 0.5},
    )
    save_checkpoint(
        directory / "sprites.safetensors",
        _unet(16, 3, len(SPRITE_CLASSES)),
        schedule,
        class_names=SPRITE_CLASSES,
        sample_shape=(3, 16, 16),
        dataset="sprites",
        training={"steps": 10, "default_guidance": 2.0},
    )
    save_checkpoint(
        directory / "flowers.safetensors",
        _unet(64, 3, 0),
        schedule,
        class_names=[],
        sample_shape=(3, 64, 64),
        dataset="flowers",
    )
    board = MLPDenoiser(MLPConfig(hidden_dim=16, num_layers=1, time_embed_dim=8, fourier_features=0))
    save_checkpoint(
        directory / "board.safetensors", board, schedule, class_names=[], sample_shape=(2,), dataset="checkerboard"
    )
    return directory
