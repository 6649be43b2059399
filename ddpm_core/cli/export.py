"""``ddpm export``: copy a run's checkpoint for serving, setting its default guidance scale."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_core.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ddpm export`` and its options to the ``ddpm`` subcommands."""
    parser = subparsers.add_parser(
        "export",
        help="copy a checkpoint for serving",
        description="Copy a checkpoint (validated, weights unchanged) and record serving defaults in its metadata.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="source, e.g. RUN_DIR/model.safetensors")
    parser.add_argument("--out", required=True, type=Path, help="destination .safetensors file")
    parser.add_argument("--default-guidance", type=float, help="guidance scale used when a request names none")


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm export`` with parsed ``args``; returns the exit status."""
    from ddpm_core.checkpoint import load_checkpoint, save_checkpoint  # torch: imported when it runs

    if args.out.resolve() == args.checkpoint.resolve():
        raise UsageError("--out must differ from --checkpoint")
    if args.default_guidance is not None and args.default_guidance < 0:
        raise UsageError("--default-guidance must be >= 0")
    source = load_checkpoint(args.checkpoint)
    training = dict(source.training)
    if args.default_guidance is not None:
        training["default_guidance"] = args.default_guidance
    save_checkpoint(
        args.out,
        source.model,
        source.schedule,
        class_names=source.class_names,
        sample_shape=source.sample_shape,
        dataset=source.dataset,
        training=training,
    )
    print(args.out)
    return 0
