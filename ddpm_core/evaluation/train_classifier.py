"""Train the MNIST evaluation classifier and save it with its test accuracy.

    python -m ddpm_core.evaluation.train_classifier --data-dir /path/to/mnist \
        --out checkpoints/mnist_classifier.safetensors --epochs 6 --seed 0

Deterministic for a seed: it runs on one CPU thread (``--threads``) and never downloads data.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ddpm_core.data.mnist import load_mnist
from ddpm_core.errors import DatasetError
from ddpm_core.evaluation.classifier import (
    ClassifierConfig,
    ClassifierTrainConfig,
    accuracy,
    save_classifier,
    train_classifier,
)

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("checkpoints/mnist_classifier.safetensors")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_core.evaluation.train_classifier",
        description="Train the small CNN that `ddpm evaluate` uses to judge generated digits.",
    )
    parser.add_argument("--data-dir", required=True, type=Path, help="directory of the four MNIST IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=ClassifierTrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=ClassifierTrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=ClassifierTrainConfig.learning_rate)
    parser.add_argument("--max-shift", type=int, default=ClassifierTrainConfig.max_shift)
    parser.add_argument("--seed", type=int, default=ClassifierTrainConfig.seed)
    parser.add_argument("--channels", default="32,64,96", help="conv widths of the three stages")
    parser.add_argument("--blocks", default="1,1,2", help="conv blocks in each of the three stages")
    parser.add_argument("--dropout", type=float, default=ClassifierConfig.dropout)
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: deterministic, default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train, measure the test accuracy, save; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        config = ClassifierConfig(
            channels=tuple(int(c) for c in args.channels.split(",")),
            blocks=tuple(int(b) for b in args.blocks.split(",")),
            dropout=args.dropout,
        )
        train_config = ClassifierTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            max_shift=args.max_shift,
            seed=args.seed,
        )
        images, labels = load_mnist(args.data_dir, "train", download=False)
        test_images, test_labels = load_mnist(args.data_dir, "test", download=False)
    except (ValueError, DatasetError) as error:
        print(f"train_classifier: error: {error}", file=sys.stderr)
        return 2
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    started = time.perf_counter()
    model = train_classifier(images, labels, config, train_config)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, test_images, test_labels)
    info = {
        "test_accuracy": test_accuracy,
        "train_images": len(images),
        "test_images": len(test_images),
        "train_config": asdict(train_config),
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "arguments": list(argv if argv is not None else sys.argv[1:]),
    }
    save_classifier(args.out, model, info)
    print(json.dumps({"out": str(args.out), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
