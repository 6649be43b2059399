"""``ddpm evaluate``: its options (torch-free, for ``ddpm --help``); the command itself is in
:mod:`ddpm_core.cli.evaluate_run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_core.cli.arguments import float_list
from ddpm_core.data.mnist_source import DEFAULT_MNIST_DIR
from ddpm_core.evaluation.sweep import DEFAULT_SWEEP
from ddpm_core.sampler_specs import DEFAULT_SAMPLER, SAMPLER_NAMES, describe_samplers

# the committed classifier, found next to the package in a source checkout
DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist_classifier.safetensors"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm evaluate`` and its options to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint's samples (classifier accuracy and FID; points on the checkerboard)",
        description=(
            "Generate K digits per class, report the accuracy of a separate MNIST classifier on them "
            "and the FID to the test set in that classifier's features, beside the train-vs-test floor; "
            "for a 2D checkerboard model, the fraction of points on the black squares. --sweep compares "
            "samplers and step counts side by side."
        ),
    )
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_MNIST_DIR),
        help=f"directory of the MNIST IDX files, for image models (default {DEFAULT_MNIST_DIR}; "
        "'ddpm data fetch mnist' puts them there)",
    )
    parser.add_argument("--per-class", type=int, default=100, help="samples per class (default 100)")
    parser.add_argument("--points", type=int, default=10_000, help="points drawn from a 2D model (default 10000)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default=DEFAULT_SAMPLER,
        help=f"default {DEFAULT_SAMPLER}: {describe_samplers()}",
    )
    parser.add_argument("--steps", type=int, help="sampling steps (default: the sampler's; ddpm: all)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the checkpoint's)")
    parser.add_argument("--guidance-sweep", type=float_list, help="evaluate each scale, e.g. 0,0.5,1,2,4")
    parser.add_argument(
        "--sweep",
        nargs="?",
        const=DEFAULT_SWEEP,
        metavar="SAMPLERS",
        help=f"evaluate every sampler at every step count, 'name[@spacing]:steps,... name ...' (alone: "
        f"'{DEFAULT_SWEEP}')",
    )
    parser.add_argument("--csv", type=Path, help="with --sweep: write the rows as CSV")
    parser.add_argument("--plot", type=Path, help="with --sweep: write a PNG plot of quality against steps")
    parser.add_argument("--table", type=Path, help="with --sweep: write the rows as a Markdown table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100, help="samples generated per batch (default 100)")
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument(
        "--min-classifier-accuracy",
        type=float,
        default=0.99,
        help="refuse to report when the classifier's own test accuracy is lower (default 0.99)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none when stderr is not a terminal)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm evaluate`` with parsed ``args``; returns the exit status."""
    from ddpm_core.cli.evaluate_run import run as run_evaluation

    return run_evaluation(args)
