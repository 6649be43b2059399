"""The models a service offers: ``*.safetensors`` files in the model directory (plus an
optional single checkpoint), named by file stem, described from their headers without torch.

The API resolves a request's model here (name -> :class:`ModelInfo` with the weights' SHA-256);
a worker finds the file of a job's model here and checks its hash against the job's spec.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from contract.settings import Settings
from ddpm_core.checkpoint_header import file_sha256, inference_defaults, read_checkpoint_info
from ddpm_core.errors import CheckpointError
from ddpm_core.evaluation.pairing import CLASSIFIER_SUFFIX
from ddpm_core.history import trained_steps

logger = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No model of that name is offered (the message never shows server paths)."""


class ModelInfo(BaseModel):
    """One model on offer, as ``GET /models`` shows it."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    dataset: str
    model_kind: str
    class_names: list[str]
    conditional: bool
    sample_shape: list[int]
    num_train_timesteps: int
    training_steps: int | None = Field(
        None, description="optimizer steps its weights were trained for, over all their training runs, when recorded"
    )
    parameter_count: int
    default_guidance: float
    weights_sha256: str
    path: Path = Field(exclude=True)  # where the worker loads it from; never shown


class ModelRegistry:
    """Finds checkpoints by name, at every call: a file added to the model directory is offered
    at once, and a replaced one is read again (header reads and hashes are cached by the file's
    inode, size and modification time in nanoseconds, so a rename onto the name always shows).

    Publish a checkpoint by writing it under another name and renaming it into place: a file
    being written is never offered, because its header's tensors do not cover its bytes yet."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[Path, tuple[tuple[int, int, int], ModelInfo]] = {}
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
            raise UnknownModel(f"unknown model {name!r}; available: {available}")
        return self._info(name, paths[name])

    def default_name(self) -> str:
        """The configured default, or the single checkpoint given with ``--checkpoint``."""
        if self.settings.checkpoint is not None and self.settings.default_model not in self.paths():
            return Path(self.settings.checkpoint).stem
        return self.settings.default_model

    def list(self) -> list[ModelInfo]:
        """Every readable model; unreadable files are logged once and left out."""
        models = []
        for name, path in self.paths().items():
            try:
                models.append(self._info(name, path))
            except (UnknownModel, OSError) as error:
                stamp = (path, path.stat().st_mtime if path.exists() else 0.0)
                if stamp not in self._skipped:
                    self._skipped.add(stamp)
                    # a classifier beside its models (<model>_classifier.safetensors, the check's) is
                    # expected there: not a model, and nothing for an operator to fix
                    quiet = path.name.endswith(CLASSIFIER_SUFFIX)
                    logger.log(logging.DEBUG if quiet else logging.WARNING, "not offering %s: %s", path, error)
        return models

    def _info(self, name: str, path: Path) -> ModelInfo:
        try:
            stat = path.stat()
        except OSError:
            raise UnknownModel(f"model {name!r} cannot be read") from None
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
        try:
            header = read_checkpoint_info(path)
            defaults = inference_defaults(header.get("training") or {})
            steps = trained_steps(header.get("training") or {})
        except CheckpointError as error:  # list() names it once; get()'s caller reports it
            reason = str(error).replace(str(path), path.name)
            raise UnknownModel(f"model {name!r} is not usable: {reason}") from None
        class_names = [str(item) for item in header["class_names"]]
        info = ModelInfo(
            name=name,
            path=path,
            dataset=str(header["dataset"]),
            model_kind=str(header["model_kind"]),
            class_names=class_names,
            conditional=bool(class_names),
            sample_shape=[int(item) for item in header["sample_shape"]],
            num_train_timesteps=int(header["schedule"]["num_train_timesteps"]),
            training_steps=steps,
            parameter_count=int(header["parameter_count"]),
            default_guidance=defaults.default_guidance,
            weights_sha256=file_sha256(path),
        )
        with self._lock:
            self._cache[path] = (key, info)
        return info
