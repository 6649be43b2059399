"""What ``ddpm train`` builds before training: per-dataset defaults, the data options, a new
model shaped for the data and the noise schedule asked for."""

from __future__ import annotations

import argparse
import logging

from torch import nn

from ddpm_core.data import DataOptions
from ddpm_core.data.datasets import TrainingData
from ddpm_core.errors import UsageError
from ddpm_core.models import MLPConfig, UNetConfig, build_model, default_attention_resolutions
from ddpm_core.schedule import DEFAULT_BETA_END, DEFAULT_BETA_START, NoiseSchedule

logger = logging.getLogger(__name__)

# Per-dataset defaults: the MNIST U-Net is sized to sample 16 digits in 1000 steps on 2 CPU cores.
# The image size and channels come from the data; attention, when not given, from the image size.
DEFAULTS = {
    "mnist": {
        "schedule": ("linear", 1000),
        "model": {"base_channels": 16, "channel_mult": (1, 2, 4), "num_res_blocks": 1, "dropout": 0.1},
        "train": {"batch_size": 128, "max_steps": 20_000, "learning_rate": 1e-3, "sample_every": 1000},
    },
    "folder": {
        "schedule": ("linear", 1000),
        "model": {"base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 2, "dropout": 0.1},
        "train": {"batch_size": 64, "max_steps": 20_000, "learning_rate": 2e-4, "sample_every": 1000},
    },
    "checkerboard": {
        "schedule": ("cosine", 200),
        "model": {"hidden_dim": 256, "num_layers": 3},
        "train": {
            "batch_size": 512,
            "max_steps": 4000,
            "learning_rate": 2e-3,
            "warmup_steps": 100,
            "lr_schedule": "cosine",
            "ema_decay": 0.995,
            "checkpoint_every": 1000,
            "log_every": 100,
        },
    },
}
DEFAULTS["npy"] = DEFAULTS["folder"]
MODEL_OPTIONS = (
    "base_channels",
    "channel_mult",
    "num_res_blocks",
    "attention_resolutions",
    "dropout",
    "num_heads",
    "hidden_dim",
    "num_layers",
)
TRAIN_OPTIONS = (
    "max_steps",
    "batch_size",
    "learning_rate",
    "warmup_steps",
    "lr_schedule",
    "weight_decay",
    "grad_clip",
    "ema_decay",
    "label_dropout",
    "loss",
    "checkpoint_every",
    "sample_every",
    "log_every",
    "seed",
)


def data_options(args: argparse.Namespace, **overrides: object) -> DataOptions:
    """The data options given on the command line (``overrides`` win)."""
    options = {
        "image_size": args.image_size,
        "channels": args.channels,
        "class_names": args.class_names,
        "unconditional": args.unconditional,
        "data_dir": args.data_dir,
    }
    return DataOptions(**{**options, **overrides})


def build_new_model(kind: str, model_options: dict, data: TrainingData) -> nn.Module:
    """A fresh MLP (checkerboard) or U-Net (images) from the merged model options, shaped for ``data``.

    Raises:
        UsageError: the options do not build a U-Net for the data's images (e.g. an image size the
            levels do not divide, an attention resolution the U-Net never reaches).
    """
    num_classes = len(data.class_names)
    if kind == "checkerboard":
        fields = {key: model_options[key] for key in ("hidden_dim", "num_layers") if key in model_options}
        return build_model("mlp", MLPConfig(data_dim=2, num_classes=num_classes, **fields))
    fields = {key: value for key, value in model_options.items() if key not in ("hidden_dim", "num_layers")}
    channels, size = data.sample_shape[0], data.sample_shape[-1]
    if "attention_resolutions" not in fields:
        fields["attention_resolutions"] = default_attention_resolutions(size, len(fields["channel_mult"]))
    try:
        config = UNetConfig(image_size=size, in_channels=channels, num_classes=num_classes, **fields)
    except ValueError as error:
        raise UsageError(f"the U-Net does not fit {data.name} ({channels} x {size} x {size} images): {error}") from None
    return build_model("unet", config)


def build_schedule(args: argparse.Namespace, kind: str) -> NoiseSchedule:
    """The noise schedule asked for: the linear one keeps the betas given (scaled only with --scale-betas)."""
    default_kind, default_steps = DEFAULTS[kind]["schedule"]
    schedule_kind = args.schedule or default_kind
    steps = args.num_train_timesteps or default_steps
    linear_only = [
        flag for flag, value in (("--beta-start", args.beta_start), ("--beta-end", args.beta_end)) if value is not None
    ] + (["--scale-betas"] if args.scale_betas else [])
    try:
        if schedule_kind == "cosine":
            if linear_only:
                raise UsageError(f"{' and '.join(linear_only)} apply to the linear schedule, not cosine")
            return NoiseSchedule.cosine(steps)
        schedule = NoiseSchedule.linear(
            steps,
            DEFAULT_BETA_START if args.beta_start is None else args.beta_start,
            DEFAULT_BETA_END if args.beta_end is None else args.beta_end,
            scale_to_length=args.scale_betas,
        )
    except ValueError as error:
        raise UsageError(f"bad schedule: {error}") from None
    final = float(schedule.alphas_cumprod[-1])
    if final > 0.01:
        logger.warning(
            "linear betas %.3g..%.3g over T=%d leave alphabar_T = %.3g: x_T keeps %.0f%% of the data's scale "
            "while sampling starts from pure noise (--scale-betas or a larger --beta-end would remove it)",
            schedule.betas[0],
            schedule.betas[-1],
            steps,
            final,
            100 * final**0.5,
        )
    return schedule
