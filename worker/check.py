"""The per-digit check: after sampling, the evaluation classifier reads every generated digit.

The classifier (``DDPM_CLASSIFIER``, by default ``mnist_classifier.safetensors`` in the model
directory; the file ``ddpm evaluate`` uses) is loaded once per worker process, on first need, on
the worker's device. It reads the samples exactly as the PNG shows them (quantised to 8 bits),
in the PNG's order, and gives each its digit and the softmax probability of that digit. Only
models it can judge are checked: MNIST models with 28x28 grey samples and the classifier's
number of classes (or none: unconditional samples get labels but no match count); any other
model's job says why it was skipped.

A job whose spec allows redraw rounds draws the samples read as another digit again, round r
with seed ``seed + n * r + i`` for sample i (:meth:`~contract.spec.JobSpec.sample_seed`), so the
job stays reproducible; the caller runs each round on the model's engine, where it shares
batches with the other jobs. A sample still read as another digit after the last round is kept
as drawn last. A mismatch can be the classifier's error as well as the model's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from contract.layout import DigitCheck, SampleCheck
from contract.spec import JobSpec
from ddpm_core.checkpoint import LoadedCheckpoint
from ddpm_core.evaluation.classifier import DigitClassifier, load_classifier

logger = logging.getLogger(__name__)

DATASET = "mnist"  # what the classifier file format judges
SAMPLE_SHAPE = (1, 28, 28)

# redraw(indices, seeds) -> the new samples (len(seeds), *shape) of those indices, drawn with those seeds
Redraw = Callable[[list[int], list[int]], torch.Tensor]


@dataclass(frozen=True)
class Classifier:
    """A loaded evaluation classifier on the worker's device."""

    name: str
    sha256: str
    test_accuracy: float | None
    model: DigitClassifier
    device: torch.device

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @torch.inference_mode()
    def read(self, samples: torch.Tensor) -> tuple[list[int], list[float]]:
        """The digit read in each sample (B, 1, 28, 28) in [-1, 1] and its softmax probability.

        The samples are quantised to 8 bits first, as the PNG stores them (and as the classifier
        was trained), so the PNG's pixels give the same labels."""
        images = ((samples.detach().float().clamp(-1, 1) + 1.0) * 127.5).round() / 127.5 - 1.0
        probabilities = torch.softmax(self.model(images.to(self.device)).float(), dim=1)
        confidence, digit = probabilities.max(dim=1)
        return [int(d) for d in digit.tolist()], [float(c) for c in confidence.tolist()]


class DigitChecker:
    """The process's classifier, loaded on first need (once; thread-safe)."""

    def __init__(self, path: Path | None, device: torch.device | str = "cpu") -> None:
        self.path = None if path is None else Path(path)
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._loaded: Classifier | None = None
        self._error: str | None = None

    def for_model(self, loaded: LoadedCheckpoint) -> Classifier | str:
        """The classifier for ``loaded``'s samples, or why they are not checked."""
        if self.path is None:
            return "the per-digit check is off (DDPM_CLASSIFIER is empty)"
        if loaded.dataset != DATASET:
            return f"no classifier for dataset {loaded.dataset!r}"
        if tuple(loaded.sample_shape) != SAMPLE_SHAPE:
            return f"no classifier for samples of shape {tuple(loaded.sample_shape)}"
        classifier = self.classifier()
        if isinstance(classifier, str):
            return classifier
        if loaded.num_classes not in (0, classifier.num_classes):
            return f"no classifier for {loaded.num_classes} classes (the classifier has {classifier.num_classes})"
        return classifier

    def classifier(self) -> Classifier | str:
        """The loaded classifier, or why there is none (the first call loads it)."""
        with self._lock:
            if self._loaded is None and self._error is None:
                self._load()
            return self._loaded if self._loaded is not None else str(self._error)

    def _load(self) -> None:
        assert self.path is not None
        if not self.path.is_file():
            self._error = f"no classifier file {self.path.name}"
            logger.warning("per-digit check off: no classifier file %s", self.path)
            return
        started = time.perf_counter()
        try:
            loaded = load_classifier(self.path)
        except Exception as error:  # a bad classifier file turns the check off, never the worker
            self._error = f"the classifier {self.path.name} cannot be loaded"
            logger.error("per-digit check off: %s", error)
            return
        accuracy = loaded.info.get("test_accuracy")
        self._loaded = Classifier(
            name=self.path.stem,
            sha256=loaded.sha256,
            test_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
            model=loaded.model.to(self.device).eval(),
            device=self.device,
        )
        seconds = time.perf_counter() - started
        logger.info("loaded classifier %s on %s in %.2f s", self.path.name, self.device, seconds)


def check_samples(
    classifier: Classifier, spec: JobSpec, samples: torch.Tensor, redraw: Redraw | None = None
) -> tuple[torch.Tensor, DigitCheck]:
    """Read ``spec``'s samples (n, 1, 28, 28); redraw mismatches as the spec allows (with ``redraw``).

    Returns the final samples (the first draw's rows replaced by redrawn ones) and the check."""
    n = samples.shape[0]
    if n != spec.n:
        raise ValueError(f"{n} samples for a job of {spec.n}")
    reading = 0.0
    started = time.perf_counter()
    digits, confidences = classifier.read(samples)
    reading += time.perf_counter() - started
    asked = spec.digit
    redrawn = [0] * n
    rounds_run = 0
    first_draw_matches = None if asked is None else sum(digit == asked for digit in digits)
    if asked is not None and redraw is not None:
        for round_ in range(1, spec.redraw_rounds + 1):
            again = [i for i in range(n) if digits[i] != asked]
            if not again:
                break
            fresh = redraw(again, [spec.sample_seed(i, round_) for i in again])
            if tuple(fresh.shape) != (len(again), *samples.shape[1:]):
                raise ValueError(f"redraw gave samples of shape {tuple(fresh.shape)} for {len(again)} samples")
            started = time.perf_counter()
            new_digits, new_confidences = classifier.read(fresh)
            reading += time.perf_counter() - started
            with torch.inference_mode():
                samples = samples.clone()
                samples[again] = fresh.to(samples.device, samples.dtype)
            for row, i in enumerate(again):
                digits[i], confidences[i], redrawn[i] = new_digits[row], new_confidences[row], round_
            rounds_run = round_
    check = DigitCheck(
        classifier=classifier.name,
        classifier_sha256=classifier.sha256,
        classifier_test_accuracy=classifier.test_accuracy,
        asked=asked,
        matches=None if asked is None else sum(digit == asked for digit in digits),
        first_draw_matches=first_draw_matches,
        redraw_rounds=spec.redraw_rounds if asked is not None else 0,
        rounds_run=rounds_run,
        redrawn=sum(1 for rounds in redrawn if rounds),
        seconds=round(reading, 4),
        samples=[
            SampleCheck(
                index=i,
                digit=digits[i],
                confidence=round(confidences[i], 4),
                seed=spec.sample_seed(i, redrawn[i]),
                matches=None if asked is None else digits[i] == asked,
                redrawn=redrawn[i],
            )
            for i in range(n)
        ],
    )
    return samples, check


def skipped(reason: str) -> DigitCheck:
    """The check of a job that was not checked."""
    return DigitCheck(skipped=reason)
