"""``ddpm train``: train a model on MNIST, a folder of images or the 2D checkerboard."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.checkpoint_header import read_checkpoint_info
from ddpm_core.cli.common import int_list, make_sample_writer
from ddpm_core.data import CheckerboardData, load_image_folder, load_mnist_data
from ddpm_core.data.datasets import TrainingData
from ddpm_core.models import MLPConfig, UNetConfig, build_model
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.training import TrainConfig, Trainer
from ddpm_core.training.state import STATE_JSON

logger = logging.getLogger(__name__)

# Per-dataset defaults: the MNIST U-Net is sized to sample 16 digits in 1000 steps on 2 CPU cores.
DEFAULTS = {
    "mnist": {
        "schedule": ("linear", 1000),
        "model": {
            "image_size": 28,
            "in_channels": 1,
            "base_channels": 16,
            "channel_mult": (1, 2, 4),
            "num_res_blocks": 1,
            "attention_resolutions": (7,),
            "dropout": 0.1,
        },
        "train": {"batch_size": 128, "max_steps": 20_000, "learning_rate": 1e-3, "sample_every": 1000},
    },
    "folder": {
        "schedule": ("linear", 1000),
        "model": {
            "image_size": 32,
            "in_channels": 3,
            "base_channels": 32,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 2,
            "attention_resolutions": (8,),
            "dropout": 0.1,
        },
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
MODEL_OPTIONS = (
    "image_size",
    "in_channels",
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm train`` and its options to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "train", help="train a model", description="Train a diffusion model; writes RUN_DIR/model.safetensors."
    )
    parser.add_argument(
        "--dataset", required=True, help="mnist, checkerboard, or folder:PATH (one subfolder per class)"
    )
    parser.add_argument(
        "--data-dir", default="data/mnist", help="directory of the MNIST IDX files (downloaded when missing)"
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--init-from", type=Path, help="start from this checkpoint's weights (same model config)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("training")
    group.add_argument("--max-steps", type=int)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--lr", dest="learning_rate", type=float)
    group.add_argument("--warmup-steps", type=int)
    group.add_argument("--lr-schedule", choices=("constant", "cosine"), help="after warm-up (default constant)")
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--grad-clip", type=float)
    group.add_argument("--ema-decay", type=float)
    group.add_argument("--label-dropout", type=float, help="probability of training with the null label (default 0.1)")
    group.add_argument("--loss", choices=("mse", "l1"))
    group.add_argument("--checkpoint-every", type=int)
    group.add_argument("--sample-every", type=int, help="write a sample grid every N steps (0: never)")
    group.add_argument("--log-every", type=int)
    group.add_argument("--seed", type=int)
    group = parser.add_argument_group("model and schedule")
    group.add_argument(
        "--schedule", choices=("linear", "cosine"), help="noise schedule (default: linear; cosine for checkerboard)"
    )
    group.add_argument("--num-train-timesteps", type=int, help="T (default 1000; 200 for checkerboard)")
    group.add_argument("--image-size", type=int)
    group.add_argument("--channels", dest="in_channels", type=int, help="image channels (folder data sets)")
    group.add_argument("--base-channels", type=int)
    group.add_argument("--channel-mult", type=int_list, help="comma-separated, e.g. 1,2,4")
    group.add_argument("--num-res-blocks", type=int)
    group.add_argument("--attention-resolutions", type=int_list, help="comma-separated, e.g. 7 or 16,8 (empty: none)")
    group.add_argument("--num-heads", type=int)
    group.add_argument("--dropout", type=float)
    group.add_argument("--hidden-dim", type=int, help="MLP width (checkerboard)")
    group.add_argument("--num-layers", type=int, help="MLP residual layers (checkerboard)")


def dataset_kind(name: str) -> str:
    """'mnist', 'checkerboard' or 'folder' for a --dataset value; ValueError for anything else."""
    if name in ("mnist", "checkerboard"):
        return name
    if name.startswith("folder:") and len(name) > len("folder:"):
        return "folder"
    raise ValueError(f"unknown dataset {name!r}; expected mnist, checkerboard or folder:PATH")


def load_data(args: argparse.Namespace, model_options: dict) -> TrainingData:
    """The training data named by --dataset (folder images resized to the model's image size)."""
    kind = dataset_kind(args.dataset)
    if kind == "mnist":
        return load_mnist_data(args.data_dir)
    if kind == "folder":
        return load_image_folder(
            args.dataset[len("folder:") :], model_options["image_size"], model_options["in_channels"]
        )
    return CheckerboardData()


def build_new_model(kind: str, model_options: dict, num_classes: int) -> nn.Module:
    """A fresh MLP (checkerboard) or U-Net (images) from the merged model options."""
    if kind == "checkerboard":
        fields = {key: model_options[key] for key in ("hidden_dim", "num_layers") if key in model_options}
        return build_model("mlp", MLPConfig(data_dim=2, num_classes=num_classes, **fields))
    fields = {key: value for key, value in model_options.items() if key not in ("hidden_dim", "num_layers")}
    return build_model("unet", UNetConfig(num_classes=num_classes, **fields))


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm train`` with parsed ``args``; returns the exit status."""
    kind = dataset_kind(args.dataset)
    given_model = {key: getattr(args, key) for key in MODEL_OPTIONS if getattr(args, key, None) is not None}
    given_train = {key: getattr(args, key) for key in TRAIN_OPTIONS if getattr(args, key, None) is not None}
    model_options = {**DEFAULTS[kind]["model"], **given_model}
    train_options = {**DEFAULTS[kind]["train"], **given_train}

    if args.resume:
        state_file = args.out / STATE_JSON
        if not state_file.is_file():
            raise ValueError(f"--resume: no training state in {args.out}")
        saved = read_checkpoint_info(args.out / "model.safetensors")
        # The run's own model and schedule win; training options given now override the saved ones.
        train_options = {**json.loads(state_file.read_text())["train_config"], **given_train}
        data = load_data(args, {**model_options, **saved["model_config"]})
        model = build_model(saved["model_kind"], saved["model_config"])
        schedule = NoiseSchedule.from_config(saved["schedule"])
    else:
        data = load_data(args, model_options)
        model = build_new_model(kind, model_options, len(data.class_names))
        default_kind, default_steps = DEFAULTS[kind]["schedule"]
        schedule_kind = args.schedule or default_kind
        schedule = NoiseSchedule.from_config(
            {"kind": schedule_kind, "num_train_timesteps": args.num_train_timesteps or default_steps}
        )
        if args.init_from:
            source = load_checkpoint(args.init_from)
            if source.model.config != model.config:
                raise ValueError(
                    f"--init-from: {args.init_from} has model config {source.model.config}, not {model.config}"
                )
            model.load_state_dict(source.model.state_dict())
    config = TrainConfig(**train_options)
    trainer = Trainer(
        model,
        schedule,
        data,
        config,
        args.out,
        device=args.device,
        sample_writer=make_sample_writer(data, schedule),
        progress=not args.no_progress,
    )
    if args.resume:
        trainer.resume()
        if trainer.step >= config.max_steps:
            logger.info("run already has %d of %d steps", trainer.step, config.max_steps)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "training %s on %s: %.2fM parameters, %s, device %s",
        type(model).__name__,
        data.name,
        parameters / 1e6,
        json.dumps({k: v for k, v in asdict(config).items() if k in ("batch_size", "max_steps", "learning_rate")}),
        trainer.device,
    )
    path = trainer.train()
    print(path)
    return 0
