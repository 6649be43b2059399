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
    CheckpointError,
    InferenceDefaults,
    file_sha256,
    inference_defaults,
    read_checkpoint_info,
)
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
        return len(self.class_names)

    @property
    def model_kind(self) -> str:
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load and validate a checkpoint; the model comes back in eval mode on ``device``."""
    path = Path(path)
    info = read_checkpoint_info(path)
    try:
        model = build_model(info["model_kind"], info["model_config"])
        schedule = NoiseSchedule.from_config(info["schedule"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read weights: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the stored model config: {first_line}") from None
    try:
        inference_defaults(info["training"])  # refuse bad defaults at load, not at the first request
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    class_names = [str(name) for name in info["class_names"]]
    if getattr(model, "num_classes", 0) != len(class_names):
        raise CheckpointError(f"{path}: {len(class_names)} class names for a model of {model.num_classes} classes")
    return LoadedCheckpoint(
        path=path,
        model=model.to(device).eval(),
        schedule=schedule,
        class_names=class_names,
        sample_shape=tuple(int(size) for size in info["sample_shape"]),
        dataset=info["dataset"],
        training=info["training"],
        weights_sha256=file_sha256(path),
    )
