"""Evaluate an MNIST diffusion checkpoint with a separate classifier.

For each class K samples are generated (in batches, sample i of the whole run seeded with
``seed + i``), quantised to uint8 as a saved PNG would be, and passed through the same
preprocessing as the real test images. Reported: the fraction classified as the digit asked
for (overall and per class), FID in the classifier's penultimate features against the MNIST
test set, and, as the floor a perfect generator would reach, the same FID between training
images and the test set (10,000 of them, and as many as were generated, since FID is biased
upwards for small sets). From 1000 samples on, both FIDs are also extrapolated in 1/N over
subsets (``fid_extrapolated``), to infinitely many samples and to as many as the floor uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_core.checkpoint import LoadedCheckpoint
from ddpm_core.data.datasets import checkerboard_fraction_on_black
from ddpm_core.data.mnist import load_mnist
from ddpm_core.evaluation.classifier import LoadedClassifier, classify
from ddpm_core.evaluation.fid import (
    MIN_EXTRAPOLATION_SAMPLES,
    FeatureStats,
    extrapolate_fid,
    feature_stats,
    fid_from_stats,
)
from ddpm_core.pipeline import generate
from ddpm_core.render import to_uint8_images
from ddpm_core.sampler_specs import sampler_spec
from ddpm_core.samplers import make_sampler

logger = logging.getLogger(__name__)

MNIST_SHAPE = (1, 28, 28)
FLOOR_TRAIN_IMAGES = 10_000
MIN_PER_CLASS_FID_SAMPLES = 100  # a class's FID needs more samples than the 96 feature dimensions
Progress = Callable[[int], None]
"""Called with the number of samples each batch added."""


@dataclass(frozen=True)
class EvalSettings:
    """How samples are drawn; ``steps`` None means the sampler's default (the registry's:
    all training timesteps for ddpm), ``spacing`` the timestep spacing."""

    per_class: int = 100
    sampler: str = "ddpm"
    steps: int | None = None
    guidance: float = 0.0
    seed: int = 0
    batch_size: int = 100
    spacing: str = "trailing"

    def make_sampler(self, checkpoint: LoadedCheckpoint):
        """The sampler these settings draw with, its timesteps set."""
        steps = self.steps
        if steps is None:
            steps = sampler_spec(self.sampler).resolve_steps(None, checkpoint.schedule.num_train_timesteps)
        return make_sampler(self.sampler, checkpoint.schedule, steps, spacing=self.spacing)

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise ValueError("--per-class must be at least 1")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.guidance < 0:
            raise ValueError("--guidance must be >= 0")
        if self.steps is not None and self.steps < 1:
            raise ValueError("--steps must be at least 1")


@dataclass
class Reference:
    """What every evaluation of one data set shares: test-set feature statistics, the
    classifier's test accuracy and the train-vs-test FID floor."""

    test_stats: FeatureStats
    classifier_test_accuracy: float
    train_features: np.ndarray  # (M, D) float64, a seeded random subset of the training set
    fid_train_vs_test: float
    # per class (optional): the test set's statistics and the labels of train_features (M,)
    test_class_stats: list[FeatureStats] | None = None
    train_labels: np.ndarray | None = None

    def floor_for(self, count: int) -> float | None:
        """FID between ``count`` training images and the test set (None when too few are held)."""
        if count < 2 or count > len(self.train_features):
            return None
        return fid_from_stats(feature_stats(self.train_features[:count]), self.test_stats)

    def per_class_fid(self, features: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float | None]] | None:
        """Each class's FID against that class's test images, beside the same FID of as many
        training images of the class (its same-n floor). ``features`` (N, D), ``labels`` (N,).

        A class drawn as a few shapes scores far above its floor even when the overall FID,
        which averages over classes, looks fine. None without per-class statistics or when a
        class has fewer than 100 samples."""
        if self.test_class_stats is None or self.train_labels is None:
            return None
        result: dict[str, dict[str, float | None]] = {}
        for label, class_stats in enumerate(self.test_class_stats):
            chosen = features[labels == label]
            if len(chosen) < MIN_PER_CLASS_FID_SAMPLES:
                return None
            train = self.train_features[self.train_labels == label][: len(chosen)]
            floor = fid_from_stats(feature_stats(train), class_stats) if len(train) == len(chosen) else None
            result[str(label)] = {"fid": fid_from_stats(feature_stats(chosen), class_stats), "floor_same_n": floor}
        return result

    def extrapolated(self, features: np.ndarray, seed: int = 0) -> dict[str, Any] | None:
        """FID of generated ``features`` (N, D) and of N training images, each fitted as
        FID_inf + slope / N over subsets; None below 1000 samples or above the training images held."""
        count = len(features)
        if count < MIN_EXTRAPOLATION_SAMPLES or count > len(self.train_features):
            return None
        generated = extrapolate_fid(features, self.test_stats, seed=seed)
        floor = extrapolate_fid(self.train_features[:count], self.test_stats, seed=seed)
        floor_images = len(self.train_features)
        return {
            "sizes": list(generated.sizes),
            "fid_by_size": [round(value, 6) for value in generated.fids],
            "fid_infinity": generated.fid_infinity,
            f"fid_at_{floor_images}": generated.at(floor_images),
            "floor_by_size": [round(value, 6) for value in floor.fids],
            "floor_infinity": floor.fid_infinity,
            # compare with fid_train_vs_test, measured on that many images: a check of the fit
            f"floor_at_{floor_images}": floor.at(floor_images),
        }


def build_reference(
    classifier: LoadedClassifier, data_dir: str | Path, train_images: int = FLOOR_TRAIN_IMAGES, seed: int = 0
) -> Reference:
    """Classify the MNIST test set and ``train_images`` random training images (never downloads)."""
    test_images, test_labels = load_mnist(data_dir, "test")
    images, labels = load_mnist(data_dir, "train")
    predicted, test_features = classify(classifier.model, test_images)
    test_accuracy = float((predicted == test_labels).mean())
    order = np.random.default_rng(seed).permutation(len(images))[:train_images]
    _, train_features = classify(classifier.model, images[order])
    test_stats = feature_stats(test_features)
    class_counts = np.bincount(test_labels, minlength=classifier.model.config.num_classes)
    test_class_stats = (
        [feature_stats(test_features[test_labels == label]) for label in range(len(class_counts))]
        if class_counts.min() >= 2
        else None
    )
    floor = fid_from_stats(feature_stats(train_features), test_stats)
    logger.info(
        "classifier test accuracy %.4f; FID of %d training vs %d test images: %.3f",
        test_accuracy,
        len(train_features),
        len(test_features),
        floor,
    )
    return Reference(test_stats, test_accuracy, train_features, floor, test_class_stats, labels[order])


def check_checkpoint(checkpoint: LoadedCheckpoint, num_classes: int) -> None:
    """Raise ValueError unless ``checkpoint`` draws 28x28 grey images with 0 or ``num_classes`` classes."""
    if checkpoint.sample_shape != MNIST_SHAPE:
        raise ValueError(
            f"{checkpoint.path} draws samples of shape {list(checkpoint.sample_shape)}; "
            f"evaluate needs an MNIST checkpoint of 28x28 grey images {list(MNIST_SHAPE)}"
        )
    if checkpoint.num_classes not in (0, num_classes):
        raise ValueError(f"{checkpoint.path} has {checkpoint.num_classes} classes; the classifier knows {num_classes}")


def generate_digits(
    checkpoint: LoadedCheckpoint, settings: EvalSettings, num_classes: int, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """uint8 images (N, 28, 28), the requested labels (N,) (None when unconditional) and the
    seconds spent sampling. N = per_class * num_classes, ordered class by class."""
    conditional = checkpoint.num_classes > 0
    count = settings.per_class * num_classes
    labels = np.repeat(np.arange(num_classes), settings.per_class) if conditional else None
    sampler = settings.make_sampler(checkpoint)
    images = []
    started = time.perf_counter()
    for start in range(0, count, settings.batch_size):
        size = min(settings.batch_size, count - start)
        samples = generate(
            checkpoint.model,
            sampler,
            sample_shape=checkpoint.sample_shape,
            num_samples=size,
            class_labels=labels[start : start + size].tolist() if conditional else None,
            guidance_scale=settings.guidance if conditional else 0.0,
            seed=settings.seed + start,
        )
        images.append(to_uint8_images(samples)[..., 0])  # (B, 28, 28, 1) -> (B, 28, 28)
        logger.debug("generated %d/%d samples (%.0f s)", start + size, count, time.perf_counter() - started)
        if progress is not None:
            progress(size)
    return np.concatenate(images), labels, time.perf_counter() - started


def evaluate_checkpoint(
    checkpoint: LoadedCheckpoint,
    classifier: LoadedClassifier,
    reference: Reference,
    settings: EvalSettings,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate, classify and compare; a JSON-ready dict of metrics, timing and settings."""
    num_classes = classifier.model.config.num_classes
    check_checkpoint(checkpoint, num_classes)
    conditional = checkpoint.num_classes > 0
    images, requested, seconds = generate_digits(checkpoint, settings, num_classes, progress)
    predicted, features = classify(classifier.model, images)
    fid = fid_from_stats(feature_stats(features), reference.test_stats)
    num_steps = len(settings.make_sampler(checkpoint).timesteps)
    result: dict[str, Any] = {
        "accuracy": None,
        "per_class_accuracy": None,
        "fid": fid,
        "fid_train_vs_test": reference.fid_train_vs_test,
        "fid_train_vs_test_same_n": reference.floor_for(len(images)),
        "fid_extrapolated": reference.extrapolated(features, seed=settings.seed),
        "per_class_fid": reference.per_class_fid(features, requested) if conditional else None,
        "predicted_class_counts": np.bincount(predicted, minlength=num_classes).tolist(),
        "num_samples": len(images),
        "fid_reference_images": reference.test_stats.count,
        "fid_floor_train_images": len(reference.train_features),
        "classifier_test_accuracy": reference.classifier_test_accuracy,
        "sampling_seconds": round(seconds, 3),
        "seconds_per_sample": round(seconds / len(images), 4),
        "settings": {
            **asdict(settings),
            "steps": num_steps,
            "guidance": settings.guidance if conditional else 0.0,
            "torch_threads": torch.get_num_threads(),
        },
        "checkpoint": str(checkpoint.path),
        "weights_sha256": checkpoint.weights_sha256,
        "conditional": conditional,
        "classifier": str(classifier.path),
        "classifier_sha256": classifier.sha256,
    }
    if conditional:
        correct = predicted == requested
        result["accuracy"] = float(correct.mean())
        result["per_class_accuracy"] = {
            str(label): float(correct[requested == label].mean()) for label in range(num_classes)
        }
    logger.info(
        "guidance %.2f: accuracy %s, FID %.3f (floor %.3f), %.1f s",
        settings.guidance,
        "n/a" if result["accuracy"] is None else f"{result['accuracy']:.4f}",
        fid,
        reference.fid_train_vs_test,
        seconds,
    )
    return result


POINTS_SHAPE = (2,)


def evaluate_points(
    checkpoint: LoadedCheckpoint, settings: EvalSettings, count: int, progress: Progress | None = None
) -> dict[str, Any]:
    """Draw ``count`` points from a 2D checkerboard model and measure the fraction on the board's
    black squares (the data: 1.0; points spread at random: 0.5). A JSON-ready dict as
    :func:`evaluate_checkpoint`'s, with ``on_squares`` in place of accuracy and FID."""
    if checkpoint.sample_shape != POINTS_SHAPE:
        raise ValueError(f"{checkpoint.path} draws samples of shape {list(checkpoint.sample_shape)}, not 2D points")
    sampler = settings.make_sampler(checkpoint)
    chunks = []
    started = time.perf_counter()
    for start in range(0, count, settings.batch_size):
        size = min(settings.batch_size, count - start)
        chunks.append(
            generate(checkpoint.model, sampler, sample_shape=POINTS_SHAPE, num_samples=size, seed=settings.seed + start)
        )
        if progress is not None:
            progress(size)
    seconds = time.perf_counter() - started
    on_squares = checkerboard_fraction_on_black(torch.cat(chunks))
    return {
        "on_squares": on_squares,
        "num_samples": count,
        "sampling_seconds": round(seconds, 3),
        "seconds_per_sample": round(seconds / count, 6),
        "settings": {**asdict(settings), "steps": len(sampler.timesteps), "torch_threads": torch.get_num_threads()},
        "checkpoint": str(checkpoint.path),
        "weights_sha256": checkpoint.weights_sha256,
    }


@torch.inference_mode()
def warm_up(checkpoint: LoadedCheckpoint, batch_size: int) -> None:
    """One forward of a full batch (twice the rows when guided), so the first timed point does
    not pay for the process's first calls."""
    rows = 2 * batch_size if checkpoint.num_classes else batch_size
    sample = torch.zeros((rows, *checkpoint.sample_shape))
    labels = torch.zeros(rows, dtype=torch.long) if checkpoint.num_classes else None
    checkpoint.model(sample, torch.zeros(rows, dtype=torch.long), labels)
