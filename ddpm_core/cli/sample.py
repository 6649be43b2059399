"""``ddpm sample``: its options (torch-free, for ``ddpm --help``); the command itself is in
:mod:`ddpm_core.cli.sample_run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_core.sampler_specs import DEFAULT_SAMPLER, SAMPLER_NAMES, describe_samplers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm sample`` and its options to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "sample", help="sample from a checkpoint", description="Sample from a trained checkpoint."
    )
    parser.add_argument("--checkpoint", required=True, type=Path)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--class",
        dest="class_label",
        metavar="NAME|INDEX",
        help="class to draw, by name (e.g. hero) or index (default: unconditional)",
    )
    which.add_argument("--digit", type=int, help="class to draw by index, e.g. a digit of an MNIST model")
    which.add_argument("--all-classes", action="store_true", help="draw --n samples of every class, a grid row each")
    parser.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default=DEFAULT_SAMPLER,
        help=f"default {DEFAULT_SAMPLER}: {describe_samplers()}",
    )
    parser.add_argument(
        "--steps", type=int, help="sampling steps (default: the sampler's: ddim 50, dpmpp_2m and uni_pc 8, ddpm all)"
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0: deterministic)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=Path, help="write a PNG grid (a scatter plot for 2D points)")
    parser.add_argument("--gif", type=Path, help="write a denoising GIF")
    parser.add_argument("--npy", type=Path, help="write the samples as float32 .npy in [-1, 1]")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when stderr is not a terminal)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm sample`` with parsed ``args``; returns the exit status."""
    from ddpm_core.cli.sample_run import run as run_sampling

    return run_sampling(args)
