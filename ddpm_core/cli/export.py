"""``ddpm export``: copy a run's checkpoint for serving, setting its default guidance scale."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_core.errors import CheckpointError, UsageError
from ddpm_core.history import HISTORY_KEY, history_metadata, training_history


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
    parser.add_argument(
        "--history",
        type=Path,
        metavar="JSON",
        help="replace the recorded training history with this JSON list of runs, oldest first, e.g. "
        '[{"steps": 3750, "start": "scratch"}, {"steps": 8000, "start": "weights", "source": "..."}] '
        "(fields: ddpm_core.history.TrainingRun), for weights trained before histories were kept",
    )


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
    if args.history is not None:
        training[HISTORY_KEY] = _read_history(args.history)
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


def _read_history(path: Path) -> list[dict]:
    """The runs of a ``--history`` file, validated, as stored in the checkpoint."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--history {path}: {error}") from None
    try:
        history = training_history({HISTORY_KEY: runs})
    except CheckpointError as error:
        raise UsageError(f"--history {path}: {str(error).removeprefix('checkpoint training metadata: ')}") from None
    if not history:
        raise UsageError(f"--history {path}: expected at least one run")
    return history_metadata(history)
