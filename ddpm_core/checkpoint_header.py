"""Reading a checkpoint's header without torch.

A ``.safetensors`` file starts with an 8-byte little-endian header length and a JSON header
whose ``__metadata__`` holds string values and whose other entries describe the tensors
(dtype, shape and byte offsets into the data that follows). This module parses and validates
that header with the standard library alone, so a process that must not import torch (the API)
can list models, and so that nothing is allocated for a file before its header is known to be
sane: every tensor entry must be well formed and lie inside the file, and the checkpoint's
parameter count must stay under a bound.

A file is taken for safetensors by its header (a plausible length, then a JSON object), whatever
its first byte: that byte is the low byte of the header length and is 0x80 (pickle's PROTO
opcode) for one header length in 256. Only a file that is not safetensors is named a pickle, when
it starts as one (0x80 and a protocol byte 2 to 5) or as a zip archive (``torch.save``'s format).
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
JSON_OBJECT_FIELDS = ("model_config", "schedule", "training")
REQUIRED_FIELDS = ("format", "format_version", "model_kind", "dataset", *JSON_FIELDS)
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a 500M-parameter model's header takes well under 1 MB
MAX_PARAMETERS = 500_000_000  # tensor elements in one checkpoint (2 GB of float32)
MAX_SAMPLE_ELEMENTS = 1 << 24  # elements of one sample, e.g. 3 x 2048 x 2048
# bytes per element of the safetensors dtypes
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive of pickles
_PICKLE_PROTO = 0x80  # the pickle PROTO opcode; the protocol number (2 to 5) follows


def read_raw_header(path: str | Path) -> dict[str, Any]:
    """The safetensors JSON header of ``path`` (tensor entries and ``__metadata__``), validated.

    Every tensor entry has a known dtype, a shape of non-negative integers and data offsets that
    match its size; together the entries cover the data after the header exactly.

    Raises:
        CheckpointError: the file is missing, pickled, or not a well-formed safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        plausible = 2 <= header_size <= min(MAX_HEADER_BYTES, size - 8)
        raw = handle.read(header_size) if plausible else b""
    if not raw.startswith(b"{"):
        # not a safetensors header: say so, naming a pickle (torch.save's formats) when it is one
        if _looks_pickled(prefix):
            raise CheckpointError(
                f"{path} is a pickled torch file; only .safetensors checkpoints are loaded (pickle is never unpickled)"
            )
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (too short)")
        if not plausible:
            raise CheckpointError(f"{path} is not a safetensors file (bad header length)")
        raise CheckpointError(f"{path} is not a safetensors file (header is not a JSON object)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not an object)")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise CheckpointError(f"{path} is not a safetensors file (__metadata__ must map names to strings)")
    _check_tensor_entries(path, header, data_size=size - 8 - header_size)
    return header


def _looks_pickled(prefix: bytes) -> bool:
    """Whether a file's first bytes are a zip archive (``torch.save``) or a pickle of protocol 2 to 5.

    Only asked once the file has failed to be safetensors: a safetensors file starts with its
    header length, whose low byte may be anything, 0x80 included.
    """
    return prefix.startswith(_ZIP_MAGIC) or (len(prefix) >= 2 and prefix[0] == _PICKLE_PROTO and 2 <= prefix[1] <= 5)


def tensor_shapes(header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a header :func:`read_raw_header` validated."""
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def read_checkpoint_info(path: str | Path, max_parameters: int = MAX_PARAMETERS) -> dict[str, Any]:
    """The project metadata of a checkpoint, with JSON fields decoded, validated.

    Keys: model_kind, model_config, schedule, class_names, sample_shape, dataset, training,
    format, format_version, ``parameter_count`` (elements of all tensors) and ``tensor_shapes``
    (name -> shape tuple).

    Raises:
        CheckpointError: the file is not a well-formed ddpm-service checkpoint, holds no
            tensors, or holds more than ``max_parameters`` elements.
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
        except (json.JSONDecodeError, RecursionError):
            raise CheckpointError(f"{path}: checkpoint metadata field {name} is not valid JSON") from None
    for name in JSON_OBJECT_FIELDS:
        if not isinstance(info[name], dict):
            raise CheckpointError(f"{path}: checkpoint metadata field {name} must be a JSON object")
    if not isinstance(info["class_names"], list) or not isinstance(info["sample_shape"], list):
        raise CheckpointError(f"{path}: class_names and sample_shape must be lists")
    sample_shape = info["sample_shape"]
    if not sample_shape or not all(_is_count(size) and size > 0 for size in sample_shape):
        raise CheckpointError(f"{path}: sample_shape must be a list of positive integers, got {sample_shape}")
    if math.prod(sample_shape) > MAX_SAMPLE_ELEMENTS:
        raise CheckpointError(
            f"{path}: sample_shape {sample_shape} exceeds {MAX_SAMPLE_ELEMENTS:,} elements per sample"
        )
    shapes = tensor_shapes(header)
    if not shapes:
        raise CheckpointError(f"{path}: checkpoint holds no tensors")
    info["tensor_shapes"] = shapes
    info["parameter_count"] = sum(math.prod(shape) for shape in shapes.values())
    if info["parameter_count"] > max_parameters:
        raise CheckpointError(
            f"{path}: checkpoint holds {info['parameter_count']:,} parameters, over the limit of {max_parameters:,}"
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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tensor_entries(path: Path, header: dict[str, Any], data_size: int) -> None:
    """Refuse malformed tensor entries: each needs a known dtype, a shape of non-negative
    integers and ``data_offsets`` [begin, end] whose length is the shape's bytes; the entries
    must tile the ``data_size`` bytes after the header exactly (as safetensors writes them)."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: malformed tensor entry {name!r} (not an object)")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(size) for size in shape):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(value) for value in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}")
        begin, end = offsets
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise CheckpointError(
                f"{path}: tensor {name!r}: data_offsets {offsets} do not fit its {dtype} shape {shape}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position or end > data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] overlap, leave a gap or run past the data"
            )
        position = end
    if position != data_size:
        raise CheckpointError(f"{path}: the tensors cover {position} of the {data_size} data bytes after the header")
