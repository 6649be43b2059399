"""``ddpm evaluate`` running (its options: :mod:`ddpm_core.cli.evaluate`).

How good a checkpoint's samples are, for one sampler or a sweep of them.

An MNIST model: the accuracy of a separate classifier on K digits per class and the FID in its
features against the test set, beside the train-vs-test floor. The 2D checkerboard: the fraction
of points on the black squares. Prints one JSON object (a JSON list with ``--guidance-sweep`` or
``--sweep``); a sweep can also write a CSV, a Markdown table and a plot.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
from tqdm import tqdm

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.data.mnist_source import find_mnist_files
from ddpm_core.errors import UsageError
from ddpm_core.evaluation.classifier import load_classifier
from ddpm_core.evaluation.evaluate import (
    POINTS_SHAPE,
    EvalSettings,
    build_reference,
    check_checkpoint,
    evaluate_checkpoint,
    evaluate_points,
    warm_up,
)
from ddpm_core.evaluation.sweep import markdown_table, parse_sweep, plot_sweep, run_sweep, write_csv

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm evaluate`` with parsed ``args``; returns the exit status."""
    _check_options(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint, device="cpu")
    is_points = checkpoint.sample_shape == POINTS_SHAPE
    default_guidance = checkpoint.defaults.default_guidance
    scales = args.guidance_sweep or (args.guidance if args.guidance is not None else default_guidance,)
    if args.guidance_sweep and checkpoint.num_classes == 0:
        raise UsageError(f"{args.checkpoint} is an unconditional model: --guidance-sweep needs class labels")
    points = parse_sweep(args.sweep) if args.sweep else None

    def settings(sampler: str, steps: int | None, spacing: str, guidance: float) -> EvalSettings:
        return EvalSettings(args.per_class, sampler, steps, guidance, args.seed, args.batch_size, spacing)

    if is_points:
        per_point = args.points

        def evaluate(chosen: EvalSettings, progress) -> dict:
            return evaluate_points(checkpoint, chosen, args.points, progress)
    else:
        find_mnist_files(args.data_dir)  # before the classifier: a missing data set is one line naming the fetch
        classifier = load_classifier(args.classifier)
        check_checkpoint(checkpoint, classifier.model.config.num_classes)
        per_point = args.per_class * classifier.model.config.num_classes
        reference = build_reference(classifier, args.data_dir)
        if reference.classifier_test_accuracy < args.min_classifier_accuracy:
            raise UsageError(
                f"the classifier {args.classifier} is {reference.classifier_test_accuracy:.4f} accurate on the test "
                f"set in {args.data_dir}, below --min-classifier-accuracy {args.min_classifier_accuracy}"
            )

        def evaluate(chosen: EvalSettings, progress) -> dict:
            return evaluate_checkpoint(checkpoint, classifier, reference, chosen, progress)

    jobs = points if points is not None else [None] * len(scales)
    warm_up(checkpoint, args.batch_size)
    disable = True if args.no_progress else None  # None: tqdm shows a bar on a terminal only
    with tqdm(total=per_point * len(jobs), unit="sample", desc="evaluate", disable=disable) as bar:
        if points is not None:
            rows = run_sweep(
                points,
                lambda point: evaluate(settings(point.sampler, point.steps, point.spacing, scales[0]), bar.update),
            )
            _write_sweep(args, rows, checkpoint.path.name, scales[0] if checkpoint.num_classes else 0.0)
            print(json.dumps([row.__dict__ for row in rows], indent=1))
            return 0
        results = [evaluate(settings(args.sampler, args.steps, "trailing", scale), bar.update) for scale in scales]
    print(json.dumps(results if args.guidance_sweep else results[0], indent=1))
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Refuse bad options before anything is loaded (EvalSettings checks its own fields)."""
    EvalSettings(args.per_class, args.sampler, args.steps, args.guidance or 0.0, args.seed, args.batch_size)
    if args.points < 2:
        raise UsageError("--points must be at least 2")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.guidance_sweep and args.guidance is not None:
        raise UsageError("give --guidance or --guidance-sweep, not both")
    if args.sweep and args.guidance_sweep:
        raise UsageError("give --sweep or --guidance-sweep, not both")
    if not args.sweep and (args.csv or args.plot or args.table):
        raise UsageError("--csv, --plot and --table write a sweep's rows: add --sweep")


def _write_sweep(args: argparse.Namespace, rows, name: str, guidance: float) -> None:
    if args.csv:
        logger.info("wrote %s", write_csv(rows, args.csv))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(markdown_table(rows) + "\n")
        logger.info("wrote %s", args.table)
    if args.plot:
        title = f"{name}: {rows[0].samples} samples per point, guidance {guidance:g}, {torch.get_num_threads()} threads"
        logger.info("wrote %s", plot_sweep(rows, args.plot, title))
