"""The engines of one worker process: one :class:`~worker.engine.Engine` per loaded model
(keyed by the SHA-256 of its weights), built with the settings' batch cap.

Every engine of one device takes its turns on that device's one thread
(:class:`~worker.engine.device_thread.DeviceThread`): compiled CUDA graphs are never driven from two
threads. An engine serves eager forwards from the moment its model is loaded and has run one forward
(which proves the model runs); the pool then hands it to the process's
:class:`~worker.compiler.BucketCompiler`, which compiles its buckets in the background.

No lock is held across slow work: the pool's lock guards its dictionaries only. The first job
for a model builds its engine; jobs for the same model wait for that build (a future), jobs
for other models and the heartbeat never do. A model whose load or first forward fails is
closed cleanly (no thread left running) and remembered: until its backoff (10 s, doubling up to
10 minutes) has passed, its jobs fail at once with the same reason instead of loading it again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from contract.settings import Settings
from contract.spec import JobSpec
from ddpm_core.checkpoint import LoadedCheckpoint
from ddpm_core.compiled import BucketedForward, power_of_two_buckets, resolve_forward_options
from worker.compiler import BucketCompiler
from worker.engine import Engine, EngineStats
from worker.engine.device_thread import DeviceThread
from worker.models import ModelCache

logger = logging.getLogger(__name__)
IDLE_BEFORE_EVICTION_S = 60.0
FIRST_BACKOFF_S = 10.0
MAX_BACKOFF_S = 600.0
EXIT_DEVICE_ERROR = 70  # EX_SOFTWARE


def exit_for_device_error(error: BaseException) -> None:
    """End the worker process after a sticky device error: the supervisor (``ddpm serve``,
    Docker's restart policy) starts a fresh one, and the jobs it held run again there."""
    logger.critical("the device is unusable (%s: %s); ending the worker process", type(error).__name__, error)
    logging.shutdown()
    os._exit(EXIT_DEVICE_ERROR)


class ModelUnavailable(RuntimeError):
    """The model failed to load or to run recently; its jobs fail until the backoff passes."""


@dataclass
class _Failure:
    message: str
    retry_at: float
    backoff_s: float


class EnginePool:
    """Models and their engines in this process (thread-safe).

    Args:
        models: the process's loaded checkpoints.
        settings: the batch cap, compile switch and model limit.
        compiler: compiles new engines' buckets in the background (None: eager only).
    """

    def __init__(
        self,
        models: ModelCache,
        settings: Settings,
        compiler: BucketCompiler | None = None,
        torch_threads: int | None = None,
    ) -> None:
        self.models = models
        self.settings = settings
        self.compiler = compiler
        self.torch_threads = torch_threads  # each device thread's CPU threads (None: torch's count)
        self._engines: dict[str, Future[tuple[LoadedCheckpoint, Engine]]] = {}
        self._failures: dict[str, _Failure] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._device_threads: dict[str, DeviceThread] = {}  # one per device, shared by its engines

    def for_spec(self, spec: JobSpec) -> tuple[LoadedCheckpoint, Engine]:
        """The model ``spec`` names (its exact weights) and the engine that runs it.

        Raises:
            ModelUnavailable: the model failed recently (within its backoff).
            Exception: the load's or first forward's error, for the job that tried.
        """
        key = spec.weights_sha256
        now = time.monotonic()
        with self._lock:
            future = self._engines.get(key)
            builder = future is None
            if builder:
                failure = self._failures.get(key)
                if failure is not None and now < failure.retry_at:
                    raise ModelUnavailable(
                        f"model {spec.model!r} is unavailable (next try in {failure.retry_at - now:.0f} s): "
                        f"{failure.message}"
                    )
                future = Future()
                self._engines[key] = future
            self._last_used[key] = now
        if builder:
            self._build(spec, future)
        loaded, engine = future.result()  # raises the build's error
        with self._lock:
            self._last_used[key] = time.monotonic()
            evicted = self._take_idle()
        for weights, idle in evicted:
            idle.close(drain=False, timeout=10)
            self.models.forget(weights)
            logger.info("unloaded model weights %s (idle)", weights[:12])
        return loaded, engine

    def _build(self, spec: JobSpec, future: Future[tuple[LoadedCheckpoint, Engine]]) -> None:
        """Load the model and start its engine (on the caller's thread, no lock held)."""
        key = spec.weights_sha256
        engine: Engine | None = None
        try:
            loaded = self.models.for_spec(spec)
            engine = self._engine(spec.model, loaded)
            engine.warmup_eager()
        except BaseException as error:
            if engine is not None:
                engine.close(drain=False, timeout=10)
            self.models.forget(key)
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            with self._lock:
                del self._engines[key]
                previous = self._failures.get(key)
                backoff = min(previous.backoff_s * 2, MAX_BACKOFF_S) if previous else FIRST_BACKOFF_S
                self._failures[key] = _Failure(message, time.monotonic() + backoff, backoff)
            logger.error("model %s failed (retry in %.0f s): %s", spec.model, backoff, message)
            future.set_exception(error)
            return
        with self._lock:
            self._failures.pop(key, None)
        future.set_result((loaded, engine))
        if self.compiler is not None:
            self.compiler.add(spec.model, loaded, engine)

    def _engine(self, name: str, loaded: LoadedCheckpoint) -> Engine:
        """An engine whose forward has the compiler's buckets (eager until each is compiled)."""
        device = next(loaded.model.parameters()).device
        in_process = self.compiler is not None and self.compiler.strategy == "inprocess"
        max_batch = resolve_forward_options(device, max_batch=self.settings.max_batch).max_batch
        forward = BucketedForward(
            loaded.model,
            sample_shape=loaded.sample_shape,
            compile=in_process,
            max_batch=max_batch,
            freezing=False if in_process else None,
            buckets=power_of_two_buckets(max_batch) if self.compiler is not None else None,
        )
        return Engine(
            loaded.model,
            loaded.schedule,
            sample_shape=loaded.sample_shape,
            forward=forward,
            max_batch=forward.max_batch,
            name=f"engine-{name}-{loaded.weights_sha256[:8]}",
            on_fatal=exit_for_device_error,
            device_thread=self._device_thread(device),
        )

    def _device_thread(self, device: torch.device) -> DeviceThread:
        """The one thread that drives every engine on ``device``."""
        with self._lock:
            thread = self._device_threads.get(str(device))
            if thread is None:
                thread = DeviceThread(f"ddpm-device-{device}", self.torch_threads)
                self._device_threads[str(device)] = thread
            return thread

    def _take_idle(self) -> list[tuple[str, Engine]]:
        """Past ``max_loaded_models``, the least recently used engines that hold no job and were
        not asked for in the last minute, removed from the pool (a model replaced on disk keeps
        its old weights here until then: jobs queued for them still run on them)."""
        built = {
            key: future.result() for key, future in self._engines.items() if future.done() and not future.exception()
        }
        excess = len(built) - self.settings.max_loaded_models
        taken: list[tuple[str, Engine]] = []
        now = time.monotonic()
        for key in sorted(built, key=self._last_used.__getitem__):
            if excess <= 0:
                break
            engine = built[key][1]
            stats = engine.stats()
            if stats.running or stats.queued or now - self._last_used[key] < IDLE_BEFORE_EVICTION_S:
                continue
            del self._engines[key], self._last_used[key]
            taken.append((key, engine))
            excess -= 1
        return taken

    def _built(self) -> list[Engine]:
        with self._lock:
            futures = list(self._engines.values())
        return [future.result()[1] for future in futures if future.done() and future.exception() is None]

    def stats(self) -> EngineStats | None:
        """The counters of all engines added up (None before the first engine)."""
        engines = self._built()
        if not engines:
            return None
        total = engines[0].stats()
        for engine in engines[1:]:
            other = engine.stats()
            for field in dataclasses.fields(EngineStats):
                if field.name not in ("max_batch", "row_seconds"):  # per engine: see row_seconds()
                    setattr(total, field.name, getattr(total, field.name) + getattr(other, field.name))
        return total

    def row_seconds(self) -> dict[str, float]:
        """Each model's recent seconds per forward row, by the SHA-256 of its weights (models that
        have run a tick)."""
        with self._lock:
            futures = dict(self._engines)
        built = {key: future.result()[1] for key, future in futures.items() if future.done() and not future.exception()}
        return {key: engine.stats().row_seconds for key, engine in built.items() if engine.stats().row_seconds}

    def close(self) -> None:
        """Stop the compiler and every engine (jobs still in them end with EngineClosed)."""
        if self.compiler is not None:
            self.compiler.stop()
        engines = self._built()
        with self._lock:
            self._engines.clear()
        for engine in engines:
            engine.close(drain=False, timeout=10)
