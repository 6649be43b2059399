"""Reading a checkpoint's header without torch.

A ``.safetensors`` file starts with an 8-byte little-endian header length and a JSON header
whose ``__metadata__`` holds string values. This module parses and validates that header with
the standard library alone, so a process that must not import torch (the API) can list models.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_core.errors import CheckpointError

FORMAT_NAME = "ddpm-service.checkpoint"
FORMAT_VERSION = "1"
JSON_FIELDS = ("model_config", "schedule", "class_names", "sample_shape", "training")
REQUIRED_FIELDS = ("format", "format_version", "model_kind", "dataset", *JSON_FIELDS)
MAX_HEADER_BYTES = 100 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"


def read_raw_header(path: str | Path) -> dict[str, Any]:
    """The safetensors JSON header of ``path`` (tensor entries and ``__metadata__``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if prefix.startswith(_ZIP_MAGIC) or prefix[:1] == b"\x80":
            raise CheckpointError(
                f"{path} is a pickled torch file; only .safetensors checkpoints are loaded (pickle is never unpickled)"
            )
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)")
        (header_size,) = struct.unpack("<Q", prefix)
        size = path.stat().st_size
        if header_size < 2 or header_size > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (bad header length)")
        raw = handle.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not an object)")
    return header


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The project metadata of a checkpoint, with JSON fields decoded, validated.

    Keys: model_kind, model_config, schedule, class_names, sample_shape, dataset, training,
    format, format_version, and ``parameter_count``.
    """
    header = read_raw_header(path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path} is a safetensors file but not a ddpm-service checkpoint (no '{FORMAT_NAME}' metadata)"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in metadata]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {', '.join(missing)}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {metadata['format_version']} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    info: dict[str, Any] = dict(metadata)
    for name in JSON_FIELDS:
        try:
            info[name] = json.loads(metadata[name])
        except (TypeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: checkpoint metadata field {name} is not valid JSON") from None
    if not isinstance(info["class_names"], list) or not isinstance(info["sample_shape"], list):
        raise CheckpointError(f"{path}: class_names and sample_shape must be lists")
    info["parameter_count"] = sum(
        _numel(entry.get("shape", []))
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict)
    )
    return info


@dataclass(frozen=True)
class InferenceDefaults:
    """What a checkpoint asks for when a request leaves a setting out.

    ``default_guidance``: the classifier-free guidance scale, finite and >= 0 (0: none).
    """

    default_guidance: float = 0.0

    def __post_init__(self) -> None:
        value = self.default_guidance
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"default_guidance must be a finite number >= 0, got {value!r}")
        object.__setattr__(self, "default_guidance", float(value))


def inference_defaults(training: dict[str, Any]) -> InferenceDefaults:
    """The inference defaults recorded in a checkpoint's ``training`` metadata.

    A missing (or null) ``default_guidance`` is 0.0; an explicit 0 stays 0.

    Raises:
        CheckpointError: ``training`` is not a dict or holds a bad value.
    """
    if not isinstance(training, dict):
        raise CheckpointError(f"checkpoint training metadata must be a JSON object, got {type(training).__name__}")
    guidance = training.get("default_guidance")
    try:
        return InferenceDefaults(default_guidance=0.0 if guidance is None else guidance)
    except ValueError as error:
        raise CheckpointError(f"checkpoint training metadata: {error}") from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: the identity of a checkpoint's weights."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count
