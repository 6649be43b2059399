"""The types a caller of the :class:`~worker.engine.Engine` handles: the request
(:class:`EngineRequest`), the handle of a submitted job (:class:`EngineJob`), the engine's
counters (:class:`EngineStats`) and :class:`EngineClosed`. Torch only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ddpm_core.pipeline import Generation, StepInfo

if TYPE_CHECKING:
    from worker.engine import Engine

StepCallback = Callable[[StepInfo], None]


class EngineClosed(RuntimeError):
    """The engine was closed: no new jobs, and jobs it dropped end with this error."""


class JobTimeLimit(RuntimeError):
    """The job ran past its time limit (``EngineRequest.time_limit_s``) and was stopped."""


@dataclass(frozen=True)
class EngineRequest:
    """One generation job.

    Attributes:
        n: number of samples, >= 1.
        sampler: 'ddpm' or 'ddim'.
        steps: inference steps; None: all of the model's training steps.
        eta: DDIM's eta (0: deterministic); must stay 0 for DDPM.
        guidance: classifier-free guidance scale w >= 0 (eps = c + w (c - u)).
        seed: sample i draws its noise from a generator seeded with ``seed + i``.
        seeds: one seed per sample instead of ``seed`` (sample i uses ``seeds[i]``); its length
            must be n. A sample drawn with seed s is the sample ``seed=s`` gives alone.
        digit: the class of every sample; None: unconditional.
        labels: one class (or None) per sample instead of ``digit``; its length must be n.
        time_limit_s: the most seconds from submission to the end; past it the engine stops the
            job, which fails with :class:`JobTimeLimit`. None: no limit.
    """

    n: int = 1
    sampler: str = "ddpm"
    steps: int | None = None
    eta: float = 0.0
    guidance: float = 0.0
    seed: int = 0
    digit: int | None = None
    labels: tuple[int | None, ...] | None = None
    seeds: tuple[int, ...] | None = None
    time_limit_s: float | None = None

    def class_labels(self) -> list[int | None] | None:
        """The per-sample labels for :class:`~ddpm_core.pipeline.Generation`."""
        if self.labels is not None:
            if self.digit is not None:
                raise ValueError("give digit or labels, not both")
            return list(self.labels)
        return None if self.digit is None else [int(self.digit)] * self.n


@dataclass
class EngineStats:
    """Counters since the engine started (a snapshot from :meth:`Engine.stats`).

    ``rows`` counts real forward rows (samples plus unconditional copies, no padding);
    ``mean_rows_per_tick`` is the mean batch, ``occupancy`` that over ``max_batch``.
    """

    max_batch: int
    ticks: int = 0
    forward_calls: int = 0
    rows: int = 0
    job_steps: int = 0
    busy_seconds: float = 0.0
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    running: int = 0
    running_rows: int = 0
    padded_rows: int = 0
    buckets_compiled: int = 0  # forward buckets that run compiled code (the others run eagerly)
    buckets_total: int = 0

    @property
    def mean_rows_per_tick(self) -> float:
        return self.rows / self.ticks if self.ticks else 0.0

    @property
    def occupancy(self) -> float:
        return self.mean_rows_per_tick / self.max_batch

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.busy_seconds if self.busy_seconds else 0.0


class EngineJob:
    """The handle of a submitted job.

    ``status`` is 'queued', 'running', 'succeeded', 'failed' or 'cancelled'; ``step`` of
    ``total`` steps are done. :meth:`result` waits for the final (n, *sample_shape) samples (on
    the model's device) or raises the job's exception: :class:`GenerationCancelled` after
    :meth:`cancel`, the callback's or forward's error after a failure, :class:`EngineClosed`
    when the engine closed first. ``submitted_at``, ``started_at`` and ``finished_at`` are
    ``time.monotonic()`` values (None until then); ``started_tick`` is the engine tick of its
    first step.
    """

    def __init__(
        self,
        engine: Engine,
        job_id: int,
        request: EngineRequest,
        generation: Generation,
        on_step: StepCallback | None,
        on_start: Callable[[], None] | None,
    ) -> None:
        self._engine = engine
        self.id = job_id
        self.request = request
        self.generation = generation
        self.total = generation.total
        self.rows = generation.forward_rows
        self.step = 0
        self.status = "queued"
        self.submitted_at = time.monotonic()
        self.deadline = None if request.time_limit_s is None else self.submitted_at + request.time_limit_s
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.started_tick: int | None = None
        self._on_step = on_step
        self._on_start = on_start
        self._cancel_requested = threading.Event()
        self._future: Future[torch.Tensor] = Future()

    def __repr__(self) -> str:
        return f"<EngineJob {self.id} {self.status} {self.step}/{self.total} rows={self.rows}>"

    def cancel(self) -> bool:
        """Ask for cancellation (any thread); it takes effect before the engine's next tick.
        False when the job has already finished."""
        if self._future.done():
            return False
        self._cancel_requested.set()
        self._engine._wake()
        return True

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested.is_set()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> torch.Tensor:
        """The final samples, (n, *sample_shape); raises the job's exception, or TimeoutError."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not done after {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's exception (None when it succeeded), waiting up to ``timeout``."""
        try:
            return self._future.exception(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not done after {timeout} s") from None

    def add_done_callback(self, fn: Callable[[EngineJob], Any]) -> None:
        """Call ``fn(job)`` once the job has finished (on the engine thread; at once if it has)."""
        self._future.add_done_callback(lambda _future: fn(self))

    def _start(self, tick: int) -> None:
        self.status = "running"
        self.started_at = time.monotonic()
        self.started_tick = tick
        self._future.set_running_or_notify_cancel()

    def _finish(self, status: str, result: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        self.status = status
        self.finished_at = time.monotonic()
        self.generation = None  # type: ignore[assignment]  # frees x_t and the generators
        if error is None:
            self._future.set_result(result)
        else:
            self._future.set_exception(error)
