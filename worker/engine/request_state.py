"""What a caller of the :class:`~worker.engine.Engine` hands in and gets back, and what the
engine knows of each job: the request (:class:`EngineRequest`), what the job takes to the host
(:class:`OutputPlan`) and gets there (:class:`HostStep` after each step, :class:`HostResult` at
the end: numpy arrays, no torch), the job's state
(:class:`JobState`: its :class:`JobStatus` and counters), the job's handle (:class:`EngineJob`)
and the errors a job ends with when the engine stops it (:class:`EngineClosed`,
:class:`JobTimeLimit`).

Nothing here refers to the engine: a handle asks for its cancellation through the callback
the engine gave it, and the engine sets its state and its outcome. Only the engine thread
writes a :class:`JobState`; other threads read it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from contract.spec import JobSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ddpm_core.pipeline import Generation, StepInfo

StepCallback = Callable[["StepInfo"], None]


Reader = Callable[["torch.Tensor"], "torch.Tensor"]
"""``reader(samples (n, *sample_shape) in [-1, 1]) -> (n, k) float32``, on the device, no sync
(e.g. :meth:`worker.check.Classifier.readings`: label and confidence per sample)."""


@dataclass(frozen=True)
class OutputPlan:
    """Which steps of a job are copied to the host (1-based steps of ``total``).

    Attributes:
        frame_steps: steps whose x_t and predicted x_0 are kept (the GIF's frames).
        preview_steps: steps whose predicted x_0 is sent as a preview (never the last step).
        reader: run on the final samples; its (n, k) readings come with them.
    """

    frame_steps: frozenset[int] = frozenset()
    preview_steps: frozenset[int] = frozenset()
    reader: Reader | None = None

    def captures(self, step: int, total: int) -> tuple[bool, bool]:
        """(x_t, x_0): which of the step's tensors the job wants on the host."""
        frame = step in self.frame_steps
        return frame, frame or (step in self.preview_steps and step < total)


@dataclass(frozen=True)
class HostStep:
    """A step of a job as host data (what ``on_output`` sees after every step).

    ``sample`` (x_t) and ``pred_original_sample`` (x_0) are None unless the job's plan asked for
    them at this step; images are uint8 (n, H, W, C), points float32 (n, 2)."""

    step: int
    total: int
    timestep: int
    sample: np.ndarray | None = None
    pred_original_sample: np.ndarray | None = None


@dataclass(frozen=True)
class HostResult:
    """A finished job's final samples on the host (uint8 (n, H, W, C) images, or float32 (n, 2)
    points) and, when its plan had a reader, its (n, k) float32 readings."""

    samples: np.ndarray
    readings: np.ndarray | None = None
    reading_error: str | None = None  # why the reader gave no readings


class EngineClosed(RuntimeError):
    """The engine was closed: no new jobs, and jobs it dropped end with this error."""


class JobTimeLimit(RuntimeError):
    """The job ran past its time limit (``EngineRequest.time_limit_s``) and was stopped."""

    @classmethod
    def stopped(cls, state: JobState) -> JobTimeLimit:
        """The error of the job ``state`` stopped now."""
        limit = state.request.time_limit_s
        return cls(f"the job ran past its time limit of {limit:g} s; stopped after {state.step} of {state.total} steps")


@dataclass(frozen=True)
class EngineRequest:
    """One generation job.

    Attributes:
        n: number of samples, >= 1.
        sampler: a name of :data:`~ddpm_core.sampler_specs.SAMPLER_NAMES`.
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

    @classmethod
    def from_spec(
        cls, spec: JobSpec, *, time_limit_s: float | None = None, seeds: tuple[int, ...] | None = None
    ) -> EngineRequest:
        """The engine request of a job spec: its sampler, steps, guidance, class and seed (or,
        for a redraw, ``seeds``: one per sample, ``n`` their number)."""
        return cls(
            n=spec.n if seeds is None else len(seeds),
            sampler=spec.sampler,
            steps=spec.steps,
            guidance=spec.guidance,
            seed=spec.seed,
            digit=spec.digit,
            seeds=seeds,
            time_limit_s=time_limit_s,
        )


class JobStatus(str, Enum):
    """Where a job is: waiting for rows, in the batch, or over (one of three ways)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class JobState:
    """One job's status and counters, written by the engine thread.

    ``step`` of ``total`` steps are done; ``rows`` is what the job takes of each forward (n
    samples, plus n unconditional copies with guidance). ``submitted_at``, ``started_at``,
    ``finished_at`` and ``deadline`` are ``time.monotonic()`` values (None until then, or no
    time limit); ``started_tick`` is the engine tick of the job's first step.
    """

    id: int
    request: EngineRequest
    rows: int
    total: int
    step: int = 0
    status: JobStatus = JobStatus.QUEUED
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    started_tick: int | None = None

    @property
    def deadline(self) -> float | None:
        limit = self.request.time_limit_s
        return None if limit is None else self.submitted_at + limit

    def start(self, tick: int) -> None:
        self.status = JobStatus.RUNNING
        self.started_at = time.monotonic()
        self.started_tick = tick

    def finish(self, status: JobStatus) -> None:
        self.status = status
        self.finished_at = time.monotonic()


class EngineJob:
    """The handle of a submitted job.

    ``status`` is a :class:`JobStatus` (a str: 'queued', 'running', 'succeeded', 'failed' or
    'cancelled'); ``step`` of ``total`` steps are done (the counters are in :attr:`state`).
    :meth:`result` waits for the final (n, *sample_shape) samples (on the model's device) or
    raises the job's exception: :class:`GenerationCancelled` after :meth:`cancel`, the
    callback's or forward's error after a failure, :class:`EngineClosed` when the engine closed
    first.

    Args:
        state: the job's state, which the engine updates.
        request_cancel: asks the engine to stop the job (any thread; called by :meth:`cancel`).
    """

    def __init__(self, state: JobState, request_cancel: Callable[[int], None]) -> None:
        self.state = state
        self._request_cancel = request_cancel
        self._cancel_requested = threading.Event()
        self._future: Future[torch.Tensor] = Future()
        self._host: HostResult | None = None

    def __repr__(self) -> str:
        return f"<EngineJob {self.id} {self.status} {self.step}/{self.total} rows={self.rows}>"

    # the state's fields, read-only
    id = property(lambda self: self.state.id)
    request = property(lambda self: self.state.request)
    rows = property(lambda self: self.state.rows)
    total = property(lambda self: self.state.total)
    step = property(lambda self: self.state.step)
    status = property(lambda self: self.state.status)
    submitted_at = property(lambda self: self.state.submitted_at)
    started_at = property(lambda self: self.state.started_at)
    finished_at = property(lambda self: self.state.finished_at)
    started_tick = property(lambda self: self.state.started_tick)
    deadline = property(lambda self: self.state.deadline)

    def cancel(self) -> bool:
        """Ask for cancellation (any thread); it takes effect before the engine's next tick.
        False when the job has already finished."""
        if self._future.done():
            return False
        self._cancel_requested.set()
        self._request_cancel(self.id)
        return True

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested.is_set()

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the job to finish; whether it has."""
        try:
            self._future.exception(timeout)
        except FutureTimeout:
            return False
        except BaseException:  # a cancelled future raises here; the job is over all the same
            pass
        return True

    def result(self, timeout: float | None = None) -> torch.Tensor:
        """The final samples, (n, *sample_shape); raises the job's exception, or TimeoutError."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not done after {timeout} s") from None

    def host_result(self, timeout: float | None = None) -> HostResult:
        """The final samples as host data (:class:`~worker.engine.outputs.HostResult`), for a job
        submitted with ``outputs``; raises the job's exception, or TimeoutError."""
        self.result(timeout)
        if self._host is None:
            raise RuntimeError(f"job {self.id} was submitted without outputs: it has no host result")
        return self._host

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's exception (None when it succeeded), waiting up to ``timeout``."""
        try:
            return self._future.exception(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not done after {timeout} s") from None

    def add_done_callback(self, fn: Callable[[EngineJob], Any]) -> None:
        """Call ``fn(job)`` once the job has finished (on the engine thread; at once if it has)."""
        self._future.add_done_callback(lambda _future: fn(self))

    def set_running(self, tick: int) -> None:
        """The engine admitted the job: its first step runs in tick ``tick``."""
        self.state.start(tick)
        self._future.set_running_or_notify_cancel()

    def set_outcome(
        self,
        status: JobStatus,
        result: torch.Tensor | None = None,
        error: BaseException | None = None,
        host: HostResult | None = None,
    ) -> None:
        """The engine ended the job: its final status and its samples (and their host copy, when
        the job asked for one) or its error."""
        self.state.finish(status)
        self._host = host
        if error is None:
            self._future.set_result(result)
        else:
            self._future.set_exception(error)


@dataclass
class LiveJob:
    """What the engine holds of a queued or running job: its handle, its generation (x_t; dropped
    when it ends), its callbacks and what it takes to the host."""

    job: EngineJob
    generation: Generation
    on_step: StepCallback | None
    on_start: Callable[[], None] | None
    outputs: OutputPlan | None = None
    on_output: Callable[[HostStep], None] | None = None


@dataclass
class EngineCall:
    """A function to run on the engine thread between ticks, and its outcome."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as error:  # handed to the caller
            self.future.set_exception(error)
