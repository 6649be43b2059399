"""Train an evaluation classifier and save it with its test accuracy and what it was trained on.

MNIST (the classifier ``ddpm evaluate`` and the service's per-class check use)::

    python -m ddpm_core.evaluation.train_classifier --data-dir /path/to/mnist \
        --out checkpoints/mnist_classifier.safetensors --epochs 6 --seed 0

Any other image data set, paired to a model trained on it: the data is named as ``ddpm train
--dataset`` names it, read at the model's size and channels, and must have the model's classes;
the classifier is written beside the model as ``<model>_classifier.safetensors``, where the
worker finds it (:mod:`ddpm_core.evaluation.pairing`)::

    python -m ddpm_core.evaluation.train_classifier --dataset folder:data/sprites \
        --checkpoint checkpoints/sprites.safetensors --epochs 10

MNIST is tested on its test files; other data on a held-out part (``--test-fraction``, drawn with
the seed). The file records the data set's name, class names, sample shape and fingerprint
(:mod:`ddpm_core.data.fingerprint`). Deterministic for a seed: it runs on one CPU thread
(``--threads``) and never downloads data.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_core.checkpoint_header import read_checkpoint_info
from ddpm_core.data.datasets import ImageData, load_mnist_data
from ddpm_core.data.fingerprint import data_fingerprint
from ddpm_core.data.spec import DATASET_HELP, DataOptions, dataset_kind, load_training_data
from ddpm_core.errors import DDPMError, UsageError
from ddpm_core.evaluation.classifier import (
    ClassifierConfig,
    ClassifierTrainConfig,
    accuracy,
    save_classifier,
    train_classifier,
)
from ddpm_core.evaluation.pairing import paired_classifier_path

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("checkpoints/mnist_classifier.safetensors")


@dataclass
class Split:
    """A data set cut into training and test images, uint8 (N, C, S, S), with labels (N,)."""

    dataset: str
    class_names: list[str]
    fingerprint: str  # of the data a model trains on (MNIST: its training files)
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_set: str  # where the test images come from, in words


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_core.evaluation.train_classifier",
        description="Train the small CNN that judges generated images (`ddpm evaluate`, the service's check).",
    )
    parser.add_argument("--dataset", default="mnist", help=f"{DATASET_HELP} (as `ddpm train --dataset`)")
    parser.add_argument("--data-dir", type=Path, help="directory of the four MNIST IDX files (--dataset mnist)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="the model to pair the classifier to: the data is read at its size and channels and must have its "
        "classes; --out defaults to <model>_classifier.safetensors beside it",
    )
    parser.add_argument("--out", type=Path, help=f"default: beside --checkpoint, else {DEFAULT_OUT} for MNIST")
    parser.add_argument("--image-size", type=int, help="resize images to N x N (default: the model's or the data's)")
    parser.add_argument("--image-channels", type=int, choices=(1, 3), help="1 or 3 (default: the model's or data's)")
    parser.add_argument("--class-names", help="comma-separated names of npy labels' classes (as `ddpm train`)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="held out for testing (not MNIST)")
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


def model_header(path: Path) -> dict[str, Any]:
    """The header of the model to pair with; UsageError for a model no classifier can judge."""
    info = read_checkpoint_info(path)
    if len(info["sample_shape"]) != 3:
        raise UsageError(
            f"{path.name} draws points, not images: its samples are checked against its data, not a classifier"
        )
    if not info["class_names"]:
        raise UsageError(f"{path.name} is an unconditional model: it has no classes for a classifier to read")
    return info


def load_split(args: argparse.Namespace, size: int | None, channels: int | None) -> Split:
    """The data set of ``args``, read at ``size`` and ``channels``, cut into training and test images."""
    kind = dataset_kind(args.dataset)
    if kind == "checkerboard":
        raise UsageError("checkerboard samples are points, checked against the board: there is no classifier for them")
    if kind == "mnist":
        if args.data_dir is None:
            raise UsageError("--dataset mnist needs --data-dir (the MNIST IDX files; nothing is downloaded)")
        if channels not in (None, 1):
            raise UsageError(f"MNIST images have 1 channel, not {channels}")
        train = load_mnist_data(args.data_dir, "train", image_size=size)
        test = load_mnist_data(args.data_dir, "test", image_size=size)
        return Split(
            dataset=train.name,
            class_names=list(train.class_names),
            fingerprint=data_fingerprint(train.images, train.labels, train.class_names),
            train_images=train.images.numpy(),
            train_labels=train.labels.numpy(),
            test_images=test.images.numpy(),
            test_labels=test.labels.numpy(),
            test_set="the MNIST test set",
        )
    class_names = tuple(name.strip() for name in args.class_names.split(",")) if args.class_names else None
    options = DataOptions(image_size=size, channels=channels, class_names=class_names)
    data = load_training_data(args.dataset, options)
    assert isinstance(data, ImageData)
    if not data.class_names:
        raise UsageError(f"{data.name} has no classes (a flat folder, or npy images without labels)")
    if not 0.0 < args.test_fraction < 1.0:
        raise UsageError("--test-fraction must be between 0 and 1")
    count = len(data)
    if count < 2:
        raise UsageError(f"{data.name} has {count} image: too few to train and test a classifier")
    held_out = min(count - 1, max(1, round(count * args.test_fraction)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(args.seed)).numpy()
    images, labels = data.images.numpy(), data.labels.numpy()
    test, train = order[:held_out], order[held_out:]
    return Split(
        dataset=data.name,
        class_names=list(data.class_names),
        fingerprint=data_fingerprint(data.images, data.labels, data.class_names),
        train_images=images[train],
        train_labels=labels[train],
        test_images=images[test],
        test_labels=labels[test],
        test_set=f"{held_out} of the {count} images held out (seed {args.seed})",
    )


def pair_with_model(split: Split, model: dict[str, Any], name: str) -> str:
    """The data set name the classifier records: the model's, once the data is shown to be its data."""
    if split.class_names != [str(item) for item in model["class_names"]]:
        raise UsageError(
            f"the data's classes [{', '.join(split.class_names)}] differ from {name}'s "
            f"[{', '.join(map(str, model['class_names']))}]"
        )
    recorded = (model.get("training") or {}).get("data_fingerprint")
    if recorded and recorded != split.fingerprint:
        raise UsageError(f"this is not the data {name} was trained on (its recorded fingerprint differs)")
    if split.dataset != model["dataset"]:
        logger.warning(
            "the data is named %r, %s names %r: recording the model's", split.dataset, name, model["dataset"]
        )
    return str(model["dataset"])


def main(argv: list[str] | None = None) -> int:
    """Train, measure the test accuracy, save; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        size, channels = args.image_size, args.image_channels
        model = model_header(args.checkpoint) if args.checkpoint else None
        if model is not None:
            channels, size = int(model["sample_shape"][0]), int(model["sample_shape"][-1])
        split = load_split(args, size, channels)
        dataset = pair_with_model(split, model, args.checkpoint.name) if model is not None else split.dataset
        out = args.out or (paired_classifier_path(args.checkpoint) if args.checkpoint else None)
        if out is None and dataset_kind(args.dataset) == "mnist":
            out = DEFAULT_OUT
        if out is None:
            raise UsageError("give --out, or --checkpoint to write the classifier beside its model")
        sample_shape = tuple(int(item) for item in split.train_images.shape[1:])
        config = ClassifierConfig(
            channels=tuple(int(c) for c in args.channels.split(",")),
            blocks=tuple(int(b) for b in args.blocks.split(",")),
            dropout=args.dropout,
            num_classes=len(split.class_names),
            in_channels=sample_shape[0],
            image_size=sample_shape[-1],
        )
        train_config = ClassifierTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            max_shift=args.max_shift,
            seed=args.seed,
        )
    except (ValueError, DDPMError) as error:
        print(f"train_classifier: error: {error}", file=sys.stderr)
        return 2
    images, labels = split.train_images, split.train_labels
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    started = time.perf_counter()
    classifier = train_classifier(images, labels, config, train_config)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(classifier, split.test_images, split.test_labels)
    info = {
        "test_accuracy": test_accuracy,
        "train_images": len(images),
        "test_images": len(split.test_images),
        "test_set": split.test_set,
        "dataset": dataset,
        "dataset_fingerprint": split.fingerprint,
        "class_names": split.class_names,
        "sample_shape": list(sample_shape),
        "model": args.checkpoint.stem if args.checkpoint else None,
        "train_config": asdict(train_config),
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "arguments": list(argv if argv is not None else sys.argv[1:]),
    }
    save_classifier(out, classifier, info)
    print(json.dumps({"out": str(out), **{key: value for key, value in info.items() if key != "class_names"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
