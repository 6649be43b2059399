"""The engines of one worker process: one :class:`~worker.engine.Engine` per loaded model
(keyed by the SHA-256 of its weights), built with the settings' batch cap and compile option.

An engine that compiles warms every bucket when it is built, on its own thread; the worker
builds the default model's engine before it reports ready, so ``/readyz`` waits for the warm-up.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from contract.settings import Settings
from contract.spec import JobSpec
from ddpm_core.checkpoint import LoadedCheckpoint
from worker.engine import Engine, EngineStats
from worker.models import ModelCache

logger = logging.getLogger(__name__)
IDLE_BEFORE_EVICTION_S = 60.0


class EnginePool:
    """Models and their engines in this process (thread-safe)."""

    def __init__(self, models: ModelCache, settings: Settings) -> None:
        self.models = models
        self.settings = settings
        self._engines: dict[str, Engine] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def for_spec(self, spec: JobSpec) -> tuple[LoadedCheckpoint, Engine]:
        """The model ``spec`` names (its exact weights) and the engine that runs it."""
        loaded = self.models.for_spec(spec)
        with self._lock:
            engine = self._engines.get(loaded.weights_sha256)
            if engine is None:
                engine = self._build(spec.model, loaded)
                self._engines[loaded.weights_sha256] = engine
            self._last_used[loaded.weights_sha256] = time.monotonic()
            self._evict_idle()
        return loaded, engine

    def _evict_idle(self) -> None:
        """Past ``max_loaded_models``, close the least recently used engines that hold no job
        and were not asked for in the last minute (a model replaced on disk leaves its old
        weights here until then: jobs queued for them still run on them)."""
        excess = len(self._engines) - self.settings.max_loaded_models
        if excess <= 0:
            return
        now = time.monotonic()
        for weights in sorted(self._engines, key=self._last_used.__getitem__):
            if excess <= 0:
                break
            engine = self._engines[weights]
            stats = engine.stats()
            if stats.running or stats.queued or now - self._last_used[weights] < IDLE_BEFORE_EVICTION_S:
                continue
            engine.close(drain=False, timeout=10)
            del self._engines[weights], self._last_used[weights]
            self.models.forget(weights)
            logger.info("unloaded model weights %s (idle; %d models loaded)", weights[:12], len(self._engines))
            excess -= 1

    def _build(self, name: str, loaded: LoadedCheckpoint) -> Engine:
        engine = Engine.from_checkpoint(
            loaded,
            compile=self.settings.compile,
            max_batch=self.settings.max_batch,
            freezing=False,  # 3-5% faster forwards, but a restart recompiles 10x slower from the cache
            name=f"engine-{name}-{loaded.weights_sha256[:8]}",
        )
        if self.settings.compile:
            started = time.perf_counter()
            seconds = engine.warmup()
            logger.info(
                "compiled model %s for batches %s in %.1f s",
                name,
                ",".join(str(bucket) for bucket in seconds),
                time.perf_counter() - started,
            )
        return engine

    def stats(self) -> EngineStats | None:
        """The counters of all engines added up (None before the first engine)."""
        with self._lock:
            engines = list(self._engines.values())
        if not engines:
            return None
        total = engines[0].stats()
        for engine in engines[1:]:
            other = engine.stats()
            for field in dataclasses.fields(EngineStats):
                if field.name != "max_batch":
                    setattr(total, field.name, getattr(total, field.name) + getattr(other, field.name))
        return total

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close(drain=False, timeout=10)
