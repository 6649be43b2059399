"""``ddpm evaluate``: classifier accuracy and classifier-feature FID of generated MNIST digits.

Prints one JSON object (or, with ``--guidance-sweep``, a JSON list of one object per scale).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.errors import UsageError
from ddpm_core.evaluation.classifier import load_classifier
from ddpm_core.evaluation.evaluate import EvalSettings, build_reference, check_checkpoint, evaluate_checkpoint

logger = logging.getLogger(__name__)

# the committed classifier, found next to the package in a source checkout
DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist_classifier.safetensors"


def float_list(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one guidance scale")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm evaluate`` and its options to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score an MNIST checkpoint (classifier accuracy, FID)",
        description=(
            "Generate K digits per class, report the accuracy of a separate MNIST classifier on them "
            "and the FID to the test set in that classifier's features, beside the train-vs-test floor."
        ),
    )
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data-dir", required=True, type=Path, help="directory of the MNIST IDX files")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class (default 100)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    parser.add_argument("--steps", type=int, help="sampling steps (default: all training steps)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the checkpoint's)")
    parser.add_argument("--guidance-sweep", type=float_list, help="evaluate each scale, e.g. 0,0.5,1,2,4")
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


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm evaluate`` with parsed ``args``; returns the exit status."""
    if args.per_class < 1:
        raise UsageError("--per-class must be at least 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint, device="cpu")
    classifier = load_classifier(args.classifier)
    check_checkpoint(checkpoint, classifier.model.config.num_classes)
    default_guidance = checkpoint.defaults.default_guidance
    scales = args.guidance_sweep or (args.guidance if args.guidance is not None else default_guidance,)
    if args.guidance_sweep and checkpoint.num_classes == 0:
        raise UsageError(f"{args.checkpoint} is an unconditional model: --guidance-sweep needs class labels")
    if args.guidance_sweep and args.guidance is not None:
        raise UsageError("give --guidance or --guidance-sweep, not both")
    settings = [
        EvalSettings(
            per_class=args.per_class,
            sampler=args.sampler,
            steps=args.steps,
            guidance=scale,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        for scale in scales
    ]
    reference = build_reference(classifier, args.data_dir)
    if reference.classifier_test_accuracy < args.min_classifier_accuracy:
        raise UsageError(
            f"the classifier {args.classifier} is {reference.classifier_test_accuracy:.4f} accurate on the test set "
            f"in {args.data_dir}, below --min-classifier-accuracy {args.min_classifier_accuracy}"
        )
    results = [evaluate_checkpoint(checkpoint, classifier, reference, setting) for setting in settings]
    print(json.dumps(results if args.guidance_sweep else results[0], indent=1))
    return 0
