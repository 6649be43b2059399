"""The models a worker process has loaded, keyed by the SHA-256 of their weights.

A job's spec names its model and the hash of the weights it must run with. A cached model of
that hash is used as is (so a job finishes on the weights it was queued for, even if the file
was replaced since); otherwise the named file is loaded, and refused when its hash differs.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from contract.registry import ModelRegistry, UnknownModel
from contract.spec import JobSpec
from ddpm_core.checkpoint import LoadedCheckpoint, load_checkpoint
from worker.store import MODEL_LOADS, ModelLoads

logger = logging.getLogger(__name__)


class SpecMismatch(Exception):
    """The model's weights are not the ones the job was queued for."""


class ModelCache:
    """Loaded checkpoints of one worker process (thread-safe)."""

    def __init__(self, registry: ModelRegistry, device: torch.device, loads: ModelLoads = MODEL_LOADS) -> None:
        self.registry = registry
        self.device = device
        self.loads = loads  # load times, for the worker's next report (the model-load metric)
        self._loaded: dict[str, LoadedCheckpoint] = {}
        self._lock = threading.Lock()

    def for_spec(self, spec: JobSpec) -> LoadedCheckpoint:
        """The model of ``spec``; raises :class:`SpecMismatch` or :class:`UnknownModel`. The load
        runs without the lock (the engine pool lets one job at a time load a given model)."""
        with self._lock:
            loaded = self._loaded.get(spec.weights_sha256)
        if loaded is not None:
            return loaded
        info = self.registry.get(spec.model)
        if info.weights_sha256 != spec.weights_sha256:
            raise SpecMismatch(_changed(spec, info.weights_sha256))
        started = time.perf_counter()
        loaded = load_checkpoint(info.path, device=self.device)
        if loaded.weights_sha256 != spec.weights_sha256:  # replaced while we read it
            raise SpecMismatch(_changed(spec, loaded.weights_sha256))
        seconds = time.perf_counter() - started
        with self._lock:
            loaded = self._loaded.setdefault(loaded.weights_sha256, loaded)
        self.loads.add(spec.model, seconds)
        logger.info(
            "loaded model %s (%s) on %s in %.2f s", spec.model, loaded.weights_sha256[:12], self.device, seconds
        )
        return loaded

    def forget(self, weights_sha256: str) -> None:
        """Drop a loaded model (its engine was closed)."""
        with self._lock:
            self._loaded.pop(weights_sha256, None)


def _changed(spec: JobSpec, found: str) -> str:
    return (
        f"model {spec.model!r} changed since the job was queued: its weights are now {found[:12]}, "
        f"the job was queued for {spec.weights_sha256[:12]}; submit the job again"
    )


__all__ = ["ModelCache", "SpecMismatch", "UnknownModel"]
