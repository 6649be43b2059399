"""Safe checkpoints: one ``.safetensors`` file of weights with the model config, schedule,
class names, sample shape and training metadata stored as JSON in its metadata.

Loading validates the header, rebuilds the model from its typed config and never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm_core.atomic import atomic_path
from ddpm_core.checkpoint_header import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_PARAMETERS,
    InferenceDefaults,
    file_sha256,
    inference_defaults,
    read_checkpoint_info,
)
from ddpm_core.errors import CheckpointError, UsageError
from ddpm_core.models import build_model, model_kind
from ddpm_core.schedule import NoiseSchedule


@dataclass
class LoadedCheckpoint:
    """A model ready to sample from, with everything its checkpoint said about it."""

    path: Path
    model: nn.Module
    schedule: NoiseSchedule
    class_names: list[str]
    sample_shape: tuple[int, ...]
    dataset: str
    training: dict[str, Any]
    weights_sha256: str

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 for an unconditional model."""
        return len(self.class_names)

    def class_index(self, label: str | int) -> int:
        """The index of a class given by name, or by index (an int or its decimal string).

        A name is looked up first, so a model whose classes are '0'..'9' reads '3' as the class
        named '3' (which is index 3).

        Raises:
            UsageError: the model is unconditional, or has no such class (its classes listed).
        """
        if not self.class_names:
            raise UsageError(f"{self.path} is an unconditional model (it has no classes): --class is not allowed")
        text = str(label).strip()
        if text in self.class_names:
            return self.class_names.index(text)
        if text.isdigit() and int(text) < self.num_classes:
            return int(text)
        shown = ", ".join(self.class_names[:20])
        if self.num_classes > 20:
            shown += f" and {self.num_classes - 20} more"
        raise UsageError(
            f"unknown class {text!r}: this model's classes are {shown} (or an index 0 to {self.num_classes - 1})"
        )

    @property
    def model_kind(self) -> str:
        """The model's registry name ('unet' or 'mlp')."""
        return model_kind(self.model)

    @property
    def defaults(self) -> InferenceDefaults:
        """Inference defaults (e.g. the guidance scale) from the checkpoint's training metadata."""
        return inference_defaults(self.training)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    schedule: NoiseSchedule,
    *,
    class_names: list[str],
    sample_shape: tuple[int, ...],
    dataset: str,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_kind": model_kind(model),
        "model_config": json.dumps(model.config.to_dict()),
        "schedule": json.dumps(schedule.config),
        "class_names": json.dumps(list(class_names)),
        "sample_shape": json.dumps(list(sample_shape)),
        "dataset": dataset,
        "training": json.dumps(training or {}),
    }
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def check_model_matches_header(
    path: str | Path,
    model: nn.Module,
    shapes: dict[str, tuple[int, ...]],
    max_parameters: int = MAX_PARAMETERS,
) -> None:
    """Refuse a file whose tensors are not the state of ``model`` before any weight is allocated.

    Args:
        path: the file, for messages.
        model: the model its config builds, best on the ``meta`` device (no memory).
        shapes: tensor name -> shape, from the file's header (:func:`tensor_shapes`).
        max_parameters: the most parameters ``model`` may have.

    Raises:
        CheckpointError: ``model`` has more than ``max_parameters`` parameters, or its state
            dict's names and shapes differ from ``shapes`` (the differences listed briefly).
    """
    count = sum(parameter.numel() for parameter in model.parameters())
    if count > max_parameters:
        raise CheckpointError(
            f"{path}: the stored model config builds {count:,} parameters, over the limit of {max_parameters:,}"
        )
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = [
        f"{name} {list(shapes[name])} (expected {list(expected[name])})"
        for name in sorted(set(expected) & set(shapes))
        if expected[name] != shapes[name]
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if items:
            problems.append(f"{label} {_brief(items)}")
    if problems:
        raise CheckpointError(f"{path}: weights do not match the stored model config: {'; '.join(problems)}")


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, max_parameters: int = MAX_PARAMETERS
) -> LoadedCheckpoint:
    """Load and validate a checkpoint; the model comes back in eval mode on ``device``.

    Nothing is allocated for the weights until the header has been checked: the model is first
    built on the ``meta`` device from the stored config, and refused when it has more than
    ``max_parameters`` parameters or when its tensors' names and shapes differ from the file's.

    Raises:
        CheckpointError: the file is missing, unsafe, malformed or inconsistent (one line).
    """
    path = Path(path)
    info = read_checkpoint_info(path, max_parameters=max_parameters)
    try:
        with torch.device("meta"):
            skeleton = build_model(info["model_kind"], info["model_config"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: {str(error).splitlines()[0]}") from None
    sample_shape = tuple(info["sample_shape"])
    if sample_shape != skeleton.config.sample_shape:
        raise CheckpointError(
            f"{path}: sample_shape {list(sample_shape)} does not match the model's {list(skeleton.config.sample_shape)}"
        )
    class_names = [str(name) for name in info["class_names"]]
    if skeleton.num_classes != len(class_names):
        raise CheckpointError(f"{path}: {len(class_names)} class names for a model of {skeleton.num_classes} classes")
    check_model_matches_header(path, skeleton, info["tensor_shapes"], max_parameters)
    try:
        schedule = NoiseSchedule.from_config(info["schedule"])
        inference_defaults(info["training"])  # refuse bad defaults at load, not at the first request
    except (ValueError, TypeError, CheckpointError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    model = build_model(info["model_kind"], info["model_config"])
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read weights: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the stored model config: {first_line}") from None
    return LoadedCheckpoint(
        path=path,
        model=model.to(device).eval(),
        schedule=schedule,
        class_names=class_names,
        sample_shape=sample_shape,
        dataset=info["dataset"],
        training=info["training"],
        weights_sha256=file_sha256(path),
    )


def _brief(items: list[str], limit: int = 3) -> str:
    """'a, b, c and 4 more'."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
