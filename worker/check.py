"""The check of a job's final samples: per class for image models, a measure for point models.

* **Per class** (``kind: classifier``): an evaluation classifier paired to the model reads every
  final sample exactly as the PNG shows it (quantised to 8 bits), in the PNG's order, and gives
  each its class and the softmax probability of that class. The classifier is the model's own
  (``<model>_classifier.safetensors`` beside its checkpoint, made by ``python -m
  ddpm_core.evaluation.train_classifier --checkpoint``) or the service's default (``DDPM_CLASSIFIER``,
  by default ``mnist_classifier.safetensors`` in the model directory, the file ``ddpm evaluate``
  uses); it judges only a model trained on its data set, at its sample shape, with its classes
  (:mod:`ddpm_core.evaluation.pairing`). Each file is loaded once per worker process, on first
  need, on the worker's device (again when the file is replaced).
* **Points** (``kind: points``): a checkerboard model's samples are measured by the fraction on
  the board's black squares (:func:`ddpm_core.data.checkerboard_fraction_on_black`), beside the
  real data's 1.0 and the 0.5 of points spread evenly.

Any other model's job says why it was not checked (:func:`skipped`).

A job whose spec allows redraw rounds draws the samples read as another class again, round r
with seed ``seed + n * r + i`` for sample i (:meth:`~contract.spec.JobSpec.sample_seed`), so the
job stays reproducible; the caller runs each round on the model's engine, where it shares
batches with the other jobs. A sample still read as another class after the last round is kept
as drawn last. A mismatch can be the classifier's error as well as the model's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contract.layout import DigitCheck, PointsCheck, SampleCheck
from contract.spec import JobSpec
from ddpm_core.checkpoint import LoadedCheckpoint
from ddpm_core.data.datasets import checkerboard_fraction_on_black
from ddpm_core.evaluation.classifier import DigitClassifier, load_classifier
from ddpm_core.evaluation.pairing import FoundClassifier, ModelSamples, find_classifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drawn:
    """Samples already read: (n, ...) samples (a tensor, or the host arrays the engine copied
    over) with each one's class and confidence, as :meth:`Classifier.read` gives them."""

    samples: torch.Tensor | np.ndarray
    labels: list[int]
    confidences: list[float]

    @classmethod
    def from_readings(cls, samples: np.ndarray, readings: np.ndarray) -> Drawn:
        """From :meth:`Classifier.readings` copied to the host: (n, 2) float32 (label, confidence)."""
        return cls(samples, [int(label) for label in readings[:, 0]], [float(c) for c in readings[:, 1]])


# redraw(indices, seeds) -> the new samples (len(seeds), *shape) of those indices, drawn with those
# seeds: as samples (the classifier reads them) or already read (:class:`Drawn`)
Redraw = Callable[[list[int], list[int]], "torch.Tensor | np.ndarray | Drawn"]


@dataclass(frozen=True)
class Classifier:
    """A loaded evaluation classifier on the worker's device."""

    name: str
    sha256: str
    test_accuracy: float | None
    model: DigitClassifier
    device: torch.device
    class_names: tuple[str, ...] = tuple(str(digit) for digit in range(10))

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @torch.inference_mode()
    def read(self, samples: torch.Tensor) -> tuple[list[int], list[float]]:
        """The class read in each sample (B, C, S, S) in [-1, 1] and its softmax probability.

        The samples are quantised to 8 bits first, as the PNG stores them (and as the classifier
        was trained), so the PNG's pixels give the same labels."""
        readings = self.readings(samples).cpu()
        return [int(d) for d in readings[:, 0].tolist()], [float(c) for c in readings[:, 1].tolist()]

    @torch.inference_mode()
    def readings(self, samples: torch.Tensor) -> torch.Tensor:
        """:meth:`read` on the samples' device without waiting for it: (B, 2) float32 holding
        each sample's class and its probability (the engine copies it with the tick's outputs)."""
        images = ((samples.detach().float().clamp(-1, 1) + 1.0) * 127.5).round() / 127.5 - 1.0
        probabilities = torch.softmax(self.model(images.to(self.device)).float(), dim=1)
        confidence, label = probabilities.max(dim=1)
        return torch.stack([label.float(), confidence], dim=1)


@dataclass(frozen=True)
class PointsMeasure:
    """How a point model's samples are measured against its data."""

    dataset: str
    measure: str
    fraction: Callable[[torch.Tensor], float]  # samples (N, 2) -> the fraction counted
    reference: float  # the real data's fraction
    chance: float  # the fraction of points spread evenly over [-1, 1]^2


CHECKERBOARD = PointsMeasure(
    dataset="checkerboard",
    measure="on_black_squares",
    fraction=checkerboard_fraction_on_black,
    reference=1.0,  # every training point lies on a black square
    chance=0.5,  # half the square [-1, 1]^2 is black
)
POINT_MEASURES = {CHECKERBOARD.dataset: CHECKERBOARD}


class DigitChecker:
    """The process's checks: classifiers loaded on first need (once per file; thread-safe).

    ``path`` is the default classifier (``DDPM_CLASSIFIER``); None turns the classifier check off
    (the points check needs no file and stays on)."""

    def __init__(self, path: Path | None, device: torch.device | str = "cpu") -> None:
        self.path = None if path is None else Path(path)
        self.device = torch.device(device)
        self._lock = threading.Lock()
        # resolved path -> (the file's inode, size and mtime, the classifier or why it cannot be loaded)
        self._loaded: dict[Path, tuple[tuple[int, int, int], Classifier | str]] = {}

    def for_model(self, loaded: LoadedCheckpoint) -> Classifier | PointsMeasure | str:
        """What checks ``loaded``'s samples, or why nothing does."""
        shape = tuple(loaded.sample_shape)
        if len(shape) == 1:
            measure = POINT_MEASURES.get(loaded.dataset)
            if measure is None or shape != (2,):
                return f"no measure for points of dataset {loaded.dataset!r}"
            return measure
        model = ModelSamples.of(loaded.dataset, loaded.class_names, shape, loaded.training)
        found = find_classifier(model, loaded.path, self.path)
        if isinstance(found, str):
            return found
        return self._classifier(found)

    def _classifier(self, found: FoundClassifier) -> Classifier | str:
        """The loaded classifier of ``found`` (loaded now when new or replaced), or why it cannot be loaded."""
        path = found.path.resolve()
        try:
            stat = path.stat()
        except OSError:
            return f"no classifier file {path.name}"
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._loaded.get(path)
            if cached is None or cached[0] != key:
                cached = (key, self._load(path, found))
                self._loaded[path] = cached
            return cached[1]

    def _load(self, path: Path, found: FoundClassifier) -> Classifier | str:
        started = time.perf_counter()
        try:
            loaded = load_classifier(path)
        except Exception as error:  # a bad classifier file turns its check off, never the worker
            logger.error("classifier %s not loaded: %s", path, error)
            return f"the classifier {path.name} cannot be loaded"
        classifier = Classifier(
            name=found.path.stem,
            sha256=loaded.sha256,
            test_accuracy=loaded.header.test_accuracy,
            model=loaded.model.to(self.device).eval(),
            device=self.device,
            class_names=loaded.header.class_names,
        )
        seconds = time.perf_counter() - started
        logger.info("loaded classifier %s on %s in %.2f s", path.name, self.device, seconds)
        return classifier


def _read(classifier: Classifier, drawn: torch.Tensor | np.ndarray | Drawn) -> tuple[Drawn, float]:
    """``drawn`` read (by ``classifier`` unless it comes read) and the seconds the reading took."""
    if isinstance(drawn, Drawn):
        return drawn, 0.0
    started = time.perf_counter()
    labels, confidences = classifier.read(drawn)
    return Drawn(drawn, labels, confidences), time.perf_counter() - started


def check_samples(
    classifier: Classifier, spec: JobSpec, samples: torch.Tensor | np.ndarray | Drawn, redraw: Redraw | None = None
) -> tuple[torch.Tensor | np.ndarray, DigitCheck]:
    """Read ``spec``'s samples (n, C, S, S) tensors, or host images with their readings
    (:class:`Drawn`); redraw mismatches as the spec allows (with ``redraw``).

    Returns the final samples (the first draw's rows replaced by redrawn ones) and the check.
    The reading time is the classifier's here; samples that come read were read on the engine."""
    first, reading = _read(classifier, samples)
    samples, labels, confidences = first.samples, list(first.labels), list(first.confidences)
    n = samples.shape[0]
    if n != spec.n:
        raise ValueError(f"{n} samples for a job of {spec.n}")
    asked = spec.digit
    redrawn = [0] * n
    rounds_run = 0
    first_draw_matches = None if asked is None else sum(label == asked for label in labels)
    if asked is not None and redraw is not None:
        for round_ in range(1, spec.redraw_rounds + 1):
            again = [i for i in range(n) if labels[i] != asked]
            if not again:
                break
            fresh = redraw(again, [spec.sample_seed(i, round_) for i in again])
            fresh_samples = fresh.samples if isinstance(fresh, Drawn) else fresh
            if tuple(fresh_samples.shape) != (len(again), *samples.shape[1:]):
                raise ValueError(f"redraw gave samples of shape {tuple(fresh_samples.shape)} for {len(again)} samples")
            fresh, seconds = _read(classifier, fresh)
            reading += seconds
            samples = _replace_rows(samples, again, fresh.samples)
            for row, i in enumerate(again):
                labels[i], confidences[i], redrawn[i] = fresh.labels[row], fresh.confidences[row], round_
            rounds_run = round_
    names = classifier.class_names
    check = DigitCheck(
        kind="classifier",
        classifier=classifier.name,
        classifier_sha256=classifier.sha256,
        classifier_test_accuracy=classifier.test_accuracy,
        asked=asked,
        asked_class=None if asked is None else names[asked],
        matches=None if asked is None else sum(label == asked for label in labels),
        first_draw_matches=first_draw_matches,
        redraw_rounds=spec.redraw_rounds if asked is not None else 0,
        rounds_run=rounds_run,
        redrawn=sum(1 for rounds in redrawn if rounds),
        seconds=round(reading, 4),
        samples=[
            SampleCheck(
                index=i,
                label=labels[i],
                class_name=names[labels[i]],
                digit=labels[i],
                confidence=round(confidences[i], 4),
                seed=spec.sample_seed(i, redrawn[i]),
                matches=None if asked is None else labels[i] == asked,
                redrawn=redrawn[i],
            )
            for i in range(n)
        ],
    )
    return samples, check


def _replace_rows(
    samples: torch.Tensor | np.ndarray, rows: list[int], fresh: torch.Tensor | np.ndarray
) -> torch.Tensor | np.ndarray:
    """A copy of ``samples`` with ``rows`` replaced by ``fresh`` (host arrays stay host arrays)."""
    if isinstance(samples, np.ndarray):
        merged = samples.copy()
        merged[rows] = np.asarray(fresh, dtype=samples.dtype)
        return merged
    with torch.inference_mode():
        merged = samples.clone()
        merged[rows] = fresh.to(samples.device, samples.dtype)
    return merged


def check_points(measure: PointsMeasure, samples: torch.Tensor | np.ndarray) -> DigitCheck:
    """Measure point samples (N, 2) in [-1, 1]^2 against their data."""
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"expected points (N, 2), got shape {tuple(samples.shape)}")
    started = time.perf_counter()
    fraction = measure.fraction(samples if isinstance(samples, np.ndarray) else samples.detach().cpu())
    total = int(samples.shape[0])
    return DigitCheck(
        kind="points",
        seconds=round(time.perf_counter() - started, 4),
        points=PointsCheck(
            measure=measure.measure,
            fraction=round(fraction, 6),
            count=round(fraction * total),
            total=total,
            reference=measure.reference,
            chance=measure.chance,
        ),
    )


def skipped(reason: str) -> DigitCheck:
    """The check of a job that was not checked."""
    return DigitCheck(skipped=reason)
