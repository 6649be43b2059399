"""Which classifier may judge a model's samples: the rule shared by the worker's check and
anything that must know beforehand (torch-free: it reads safetensors headers only).

A classifier file says what it was trained on in its metadata (``info``): the data set's name
as ``ddpm train`` records it (``mnist``, ``folder:PATH``, ``npy:IMAGES.npy``), the class names,
the sample shape and the fingerprint of the data (:mod:`ddpm_core.data.fingerprint`). It judges a
model whose checkpoint names the same data set, sample shape and classes (an unconditional
model's samples get labels but no matches), and, when the model records the fingerprint of its
training data (``training.data_fingerprint``), the same fingerprint. The classifier files made
before this metadata existed (``mnist_classifier.safetensors``) are MNIST classifiers: 1 x 28 x 28,
classes '0' to '9'.

Where it is looked for: ``<model>_classifier.safetensors`` beside the model's checkpoint (what
``python -m ddpm_core.evaluation.train_classifier --checkpoint MODEL`` writes), which decides when
it is there; otherwise the service's default classifier (``DDPM_CLASSIFIER``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_core.checkpoint_header import read_raw_header
from ddpm_core.errors import CheckpointError

CLASSIFIER_FORMAT = "ddpm-service.mnist-classifier"  # the name predates classifiers of other data
CLASSIFIER_FORMAT_VERSION = "1"
CLASSIFIER_SUFFIX = "_classifier.safetensors"
LEGACY_DATASET = "mnist"  # what a classifier file without a recorded data set was trained on


@dataclass(frozen=True)
class ClassifierHeader:
    """What a classifier file says it judges."""

    name: str  # the file's stem
    dataset: str
    class_names: tuple[str, ...]
    sample_shape: tuple[int, ...]  # (C, S, S)
    dataset_fingerprint: str | None
    test_accuracy: float | None

    @classmethod
    def from_metadata(cls, name: str, config: Mapping[str, Any], info: Mapping[str, Any]) -> ClassifierHeader:
        """From a classifier file's ``config`` and ``info`` (JSON objects); ValueError when inconsistent."""
        num_classes = int(config.get("num_classes", 10))
        channels, size = int(config.get("in_channels", 1)), int(config.get("image_size", 28))
        class_names = info.get("class_names")
        if class_names is None:
            class_names = [str(index) for index in range(num_classes)]
        if not isinstance(class_names, list) or len(class_names) != num_classes:
            raise ValueError(f"{num_classes} classes but class names {class_names!r}")
        fingerprint = info.get("dataset_fingerprint")
        accuracy = info.get("test_accuracy")
        return cls(
            name=name,
            dataset=str(info.get("dataset") or LEGACY_DATASET),
            class_names=tuple(str(item) for item in class_names),
            sample_shape=(channels, size, size),
            dataset_fingerprint=str(fingerprint) if fingerprint else None,
            test_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
        )


@dataclass(frozen=True)
class ModelSamples:
    """What the pairing needs to know of a model, from its checkpoint's header."""

    dataset: str
    class_names: tuple[str, ...]
    sample_shape: tuple[int, ...]
    data_fingerprint: str | None = None

    @classmethod
    def of(
        cls, dataset: str, class_names: Sequence[str], sample_shape: Sequence[int], training: Mapping[str, Any]
    ) -> ModelSamples:
        """From a checkpoint's ``dataset``, ``class_names``, ``sample_shape`` and ``training`` metadata."""
        fingerprint = training.get("data_fingerprint") if isinstance(training, Mapping) else None
        return cls(
            dataset=str(dataset),
            class_names=tuple(str(name) for name in class_names),
            sample_shape=tuple(int(size) for size in sample_shape),
            data_fingerprint=str(fingerprint) if fingerprint else None,
        )


@dataclass(frozen=True)
class FoundClassifier:
    """The classifier file that judges a model, and its header."""

    path: Path
    header: ClassifierHeader


def read_classifier_header(path: str | Path) -> ClassifierHeader:
    """The header of a classifier file, without loading its weights.

    Raises:
        CheckpointError: not a safetensors file, not a classifier, or inconsistent metadata.
    """
    path = Path(path)
    metadata = read_raw_header(path).get("__metadata__") or {}
    if metadata.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path} is not an MNIST classifier or other image classifier file")
    if metadata.get("format_version") != CLASSIFIER_FORMAT_VERSION:
        raise CheckpointError(f"{path}: classifier format version {metadata.get('format_version')} is not supported")
    try:
        config, info = json.loads(metadata["config"]), json.loads(metadata.get("info", "{}"))
        if not isinstance(config, dict) or not isinstance(info, dict):
            raise ValueError("config and info must be JSON objects")
        return ClassifierHeader.from_metadata(path.stem, config, info)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad classifier metadata: {error}") from None


def pairing_problem(classifier: ClassifierHeader, model: ModelSamples) -> str | None:
    """Why ``classifier`` cannot judge ``model``'s samples; None when it can."""
    if classifier.dataset != model.dataset:
        return f"no classifier for dataset {model.dataset!r}"
    if classifier.sample_shape != model.sample_shape:
        return f"no classifier for samples of shape {model.sample_shape}"
    if model.class_names:
        ours, theirs = len(model.class_names), len(classifier.class_names)
        if ours != theirs:
            return f"no classifier for {ours} classes (the classifier has {theirs})"
        if model.class_names != classifier.class_names:
            return f"the classifier {classifier.name} was trained on other classes than the model's"
    if (
        model.data_fingerprint is not None
        and classifier.dataset_fingerprint is not None
        and model.data_fingerprint != classifier.dataset_fingerprint
    ):
        return f"the classifier {classifier.name} was trained on other data than the model (fingerprints differ)"
    return None


def paired_classifier_path(model_path: str | Path) -> Path:
    """Where a model's own classifier lives: ``<model>_classifier.safetensors`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + CLASSIFIER_SUFFIX)


def find_classifier(model: ModelSamples, model_path: Path | None, default: Path | None) -> FoundClassifier | str:
    """The classifier that judges ``model``'s samples, or why there is none.

    The model's own classifier (beside ``model_path``) decides when it is there; otherwise the
    ``default`` classifier file (None: the check is off). Messages name files, never directories."""
    if default is None:
        return "the per-class check is off (DDPM_CLASSIFIER is empty)"
    own = paired_classifier_path(model_path) if model_path is not None else None
    if own is not None and own.is_file():
        path = own
    elif default.is_file():
        path = default
    elif model.dataset == LEGACY_DATASET:
        return f"no classifier file {default.name}"
    else:
        return f"no classifier for dataset {model.dataset!r}"
    try:
        header = read_classifier_header(path)
    except (CheckpointError, OSError):
        return f"the classifier {path.name} cannot be loaded"
    problem = pairing_problem(header, model)
    return problem if problem is not None else FoundClassifier(path, header)
