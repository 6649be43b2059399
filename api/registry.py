"""The models a service offers: ``*.safetensors`` files in the model directory (plus an
optional single checkpoint), named by file stem, described from their headers without torch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.settings import Settings
from ddpm_core.checkpoint_header import CheckpointError, file_sha256, read_checkpoint_info

logger = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No model of that name is offered."""


@dataclass(frozen=True)
class ModelInfo:
    """What the API needs to know about one checkpoint."""

    name: str
    path: Path
    class_names: list[str]
    sample_shape: list[int]
    num_train_timesteps: int
    dataset: str
    model_kind: str
    parameter_count: int
    default_guidance: float
    weights_sha256: str

    def public(self) -> dict[str, Any]:
        """The JSON shown by ``GET /models``."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "model_kind": self.model_kind,
            "class_names": self.class_names,
            "conditional": bool(self.class_names),
            "sample_shape": self.sample_shape,
            "num_train_timesteps": self.num_train_timesteps,
            "parameter_count": self.parameter_count,
            "default_guidance": self.default_guidance,
            "weights_sha256": self.weights_sha256,
        }


class ModelRegistry:
    """Finds checkpoints by name; header reads and hashes are cached by (path, mtime, size)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[Path, tuple[tuple[float, int], ModelInfo]] = {}
        self._skipped: set[tuple[Path, float]] = set()  # unusable files, logged once
        self._lock = threading.Lock()

    def paths(self) -> dict[str, Path]:
        """Model name -> checkpoint path."""
        found: dict[str, Path] = {}
        directory = Path(self.settings.model_dir)
        if directory.is_dir():
            for path in sorted(directory.glob("*.safetensors")):
                found[path.stem] = path
        if self.settings.checkpoint is not None:
            found[Path(self.settings.checkpoint).stem] = Path(self.settings.checkpoint)
        return found

    def get(self, name: str | None) -> ModelInfo:
        """The model called ``name`` (None: the default model); raises :class:`UnknownModel`."""
        name = name or self.default_name()
        paths = self.paths()
        if name not in paths:
            available = ", ".join(model.name for model in self.list()) or "none"
            raise UnknownModel(
                f"unknown model {name!r}; available: {available} (model directory {self.settings.model_dir})"
            )
        return self._info(name, paths[name])

    def default_name(self) -> str:
        """The configured default, or the single checkpoint given with ``--checkpoint``."""
        if self.settings.checkpoint is not None and self.settings.default_model not in self.paths():
            return Path(self.settings.checkpoint).stem
        return self.settings.default_model

    def list(self) -> list[ModelInfo]:
        """Every readable model; unreadable files are logged and left out."""
        models = []
        for name, path in self.paths().items():
            try:
                models.append(self._info(name, path))
            except (UnknownModel, CheckpointError, OSError) as error:
                stamp = (path, path.stat().st_mtime if path.exists() else 0.0)
                if stamp not in self._skipped:
                    self._skipped.add(stamp)
                    logger.warning("not offering %s: %s", path, error)
        return models

    def _info(self, name: str, path: Path) -> ModelInfo:
        try:
            stat = path.stat()
        except OSError as error:
            raise UnknownModel(f"model {name!r} cannot be read: {error}") from None
        key = (stat.st_mtime, stat.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
        try:
            header = read_checkpoint_info(path)
        except CheckpointError as error:
            raise UnknownModel(f"model {name!r} is not usable: {error}") from None
        training = header.get("training") or {}
        info = ModelInfo(
            name=name,
            path=path,
            class_names=[str(item) for item in header["class_names"]],
            sample_shape=[int(item) for item in header["sample_shape"]],
            num_train_timesteps=int(header["schedule"]["num_train_timesteps"]),
            dataset=str(header["dataset"]),
            model_kind=str(header["model_kind"]),
            parameter_count=int(header["parameter_count"]),
            default_guidance=float(training.get("default_guidance", 0.0) or 0.0),
            weights_sha256=file_sha256(path),
        )
        with self._lock:
            self._cache[path] = (key, info)
        return info
