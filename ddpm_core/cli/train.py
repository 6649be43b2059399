"""``ddpm train``: its options (torch-free, for ``ddpm --help``); the command itself is in
:mod:`ddpm_core.cli.train_run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_core.cli.arguments import int_list, name_list
from ddpm_core.data.mnist_source import DEFAULT_MNIST_DIR
from ddpm_core.data.spec import DATASET_HELP
from ddpm_core.defaults import DEFAULT_BETA_END, DEFAULT_BETA_START
from ddpm_core.defaults import DEFAULT_DIST_TIMEOUT_S as DEFAULT_TIMEOUT_S


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
        "--data-dir",
        default=DEFAULT_MNIST_DIR,
        help=f"directory of the MNIST IDX files (default {DEFAULT_MNIST_DIR}; 'ddpm data fetch mnist' puts them there)",
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
    group.add_argument("--max-steps", type=int, help="optimiser steps (the learning-rate schedule counts these)")
    group.add_argument(
        "--batch-size",
        type=int,
        help="the global batch per optimiser step: under torchrun it is split evenly over the ranks "
        "(and over --accumulate micro-batches), so the same value trains the same model on any number of GPUs",
    )
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
    group.add_argument("--seed", type=int, help="seeds the initial weights, the data order and the noise")
    group = parser.add_argument_group("speed, scale and logs (what is learned stays the same, to float rounding)")
    group.add_argument(
        "--accumulate",
        type=int,
        default=1,
        help="micro-batches per optimiser step on each rank, with one gradient sync per step: a small GPU "
        "reaches the global batch (default 1)",
    )
    group.add_argument("--compile", action="store_true", help="torch.compile the model's training step")
    group.add_argument(
        "--data-workers",
        type=int,
        help="processes preparing batches ahead of the device (default: 2 on CUDA, 0 on the CPU)",
    )
    group.add_argument(
        "--log",
        choices=("jsonl", "tensorboard"),
        default="jsonl",
        help="RUN_DIR/log.jsonl is always written (loss, lr, grad_norm, images_per_s, eta_s); tensorboard "
        "also writes RUN_DIR/tensorboard (needs the tensorboard package)",
    )
    group.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before the run ends with an error "
        f"(default {DEFAULT_TIMEOUT_S:g}; rank 0 writes checkpoints and sample grids meanwhile)",
    )
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


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm train`` with parsed ``args``; returns the exit status."""
    from ddpm_core.cli.train_run import run as run_training

    return run_training(args)
