"""``ddpm train``: train a model on MNIST, a folder of images, .npy arrays or the 2D checkerboard.

The data set is read and validated first; the model is then built for the data's sample shape
(image size and channels) and classes, so nothing is trained on data the model does not fit.
"""

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
from ddpm_core.data import DataOptions, dataset_kind, load_training_data
from ddpm_core.data.datasets import TrainingData
from ddpm_core.data.spec import DATASET_HELP
from ddpm_core.errors import UsageError
from ddpm_core.models import MLPConfig, UNetConfig, build_model, default_attention_resolutions
from ddpm_core.schedule import DEFAULT_BETA_END, DEFAULT_BETA_START, NoiseSchedule
from ddpm_core.training import TrainConfig, Trainer
from ddpm_core.training.state import STATE_JSON

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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm train`` and its options to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "train", help="train a model", description="Train a diffusion model; writes RUN_DIR/model.safetensors."
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help=f"{DATASET_HELP}. A folder: one subfolder per class (class names: the sorted folder names) or a "
        "flat folder of images (unconditional). npy: images (N,H,W,C), (N,C,H,W) or (N,H,W), uint8 or float "
        "in [0,1] or [-1,1]; labels as class indices (N,) or one-hot rows (N,K)",
    )
    parser.add_argument(
        "--data-dir", default="data/mnist", help="directory of the MNIST IDX files (downloaded when missing)"
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--init-from", type=Path, help="start from this checkpoint's weights (same model config)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("data")
    group.add_argument(
        "--image-size",
        type=int,
        help="train at N x N pixels: MNIST and npy images are resized bilinearly (28 -> 32 for a 32-px MNIST "
        "model), folder images centre-cropped and resized. Default: the data's own size, which must be square "
        "and the same for every image",
    )
    group.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="1 (grey) or 3 (RGB): a folder's images are converted; MNIST and npy data must already have as "
        "many. Default: the data's own (a folder is grey only when every image is)",
    )
    group.add_argument(
        "--class-names",
        type=name_list,
        help="comma-separated names of the npy labels' classes, e.g. hero,non-hero,food (as many as one-hot "
        "columns; default 0,1,...)",
    )
    group.add_argument("--unconditional", action="store_true", help="ignore the labels: train a model without classes")
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
    group.add_argument(
        "--loss", choices=("mse", "l2", "l1"), help="of the predicted noise: mse (the same as l2; default) or l1"
    )
    group.add_argument("--checkpoint-every", type=int)
    group.add_argument("--sample-every", type=int, help="write a sample grid every N steps (0: never)")
    group.add_argument("--log-every", type=int)
    group.add_argument("--seed", type=int)
    group = parser.add_argument_group("schedule")
    group.add_argument(
        "--schedule", choices=("linear", "cosine"), help="noise schedule (default: linear; cosine for checkerboard)"
    )
    group.add_argument("--num-train-timesteps", type=int, help="T (default 1000; 200 for checkerboard)")
    group.add_argument(
        "--beta-start",
        type=float,
        help=f"first beta of the linear schedule (default {DEFAULT_BETA_START}), kept as given for any T",
    )
    group.add_argument(
        "--beta-end",
        type=float,
        help=f"last beta of the linear schedule (default {DEFAULT_BETA_END}), kept as given for any T",
    )
    group.add_argument(
        "--scale-betas",
        action="store_true",
        help="multiply the linear schedule's betas by 1000/T (improved-diffusion's rule, which keeps x_T pure "
        "noise for a short schedule; the end capped at 0.999). Off by default: the betas are used as given",
    )
    group = parser.add_argument_group("model")
    group.add_argument(
        "--base-channels", type=int, help="U-Net channels at the first level (default 16 for mnist, 32 otherwise)"
    )
    group.add_argument(
        "--channel-mult",
        type=int_list,
        help="comma-separated, one per level, e.g. 1,2,4,8 (with --base-channels 64: levels of 64-128-256-512); "
        "the image size must be divisible by 2^(levels-1)",
    )
    group.add_argument("--num-res-blocks", type=int, help="residual blocks per level")
    group.add_argument(
        "--attention-resolutions",
        type=int_list,
        help="comma-separated, e.g. 7 or 16,8 (empty: none). Default: image_size/4 for 3 or more levels, "
        "image_size/2 for 2, none for 1",
    )
    group.add_argument("--num-heads", type=int)
    group.add_argument("--dropout", type=float)
    group.add_argument("--hidden-dim", type=int, help="MLP width (checkerboard)")
    group.add_argument("--num-layers", type=int, help="MLP residual layers (checkerboard)")


def name_list(text: str) -> tuple[str, ...]:
    """'a,b, c' -> ('a', 'b', 'c')."""
    return tuple(part.strip() for part in text.split(","))


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


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm train`` with parsed ``args``; returns the exit status."""
    kind = dataset_kind(args.dataset)
    if args.loss == "l2":
        args.loss = "mse"
    given_model = {key: getattr(args, key) for key in MODEL_OPTIONS if getattr(args, key, None) is not None}
    given_train = {key: getattr(args, key) for key in TRAIN_OPTIONS if getattr(args, key, None) is not None}
    model_options = {**DEFAULTS[kind]["model"], **given_model}
    train_options = {**DEFAULTS[kind]["train"], **given_train}

    if args.resume:
        state_file = args.out / STATE_JSON
        if not state_file.is_file():
            raise UsageError(f"--resume: no training state in {args.out}")
        saved = read_checkpoint_info(args.out / "model.safetensors")
        # The run's own model and schedule win; training options given now override the saved ones.
        train_options = {**json.loads(state_file.read_text())["train_config"], **given_train}
        saved_config = saved["model_config"]
        images = {"image_size": saved_config.get("image_size"), "channels": saved_config.get("in_channels")}
        data = load_training_data(
            args.dataset, data_options(args, **images, unconditional=args.unconditional or not saved["class_names"])
        )
        if data.class_names != saved["class_names"]:
            raise UsageError(
                f"--resume: the data's classes [{', '.join(data.class_names)}] differ from the run's "
                f"[{', '.join(map(str, saved['class_names']))}]"
            )
        model = build_model(saved["model_kind"], saved_config)
        schedule = NoiseSchedule.from_config(saved["schedule"])
    else:
        data = load_training_data(args.dataset, data_options(args))
        model = build_new_model(kind, model_options, data)
        schedule = build_schedule(args, kind)
        if args.init_from:
            source = load_checkpoint(args.init_from)
            if source.model.config != model.config:
                raise UsageError(
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
        "training %s on %s: %.2fM parameters, samples %s, %d classes, schedule %s, %s, device %s",
        type(model).__name__,
        data.name,
        parameters / 1e6,
        list(data.sample_shape),
        len(data.class_names),
        schedule.config,
        json.dumps({k: v for k, v in asdict(config).items() if k in ("batch_size", "max_steps", "learning_rate")}),
        trainer.device,
    )
    path = trainer.train()
    print(path)
    return 0
