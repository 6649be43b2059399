"""The worker's inference engine: step-level batching of generation jobs over one model.

An :class:`Engine` owns one model (and its forward, e.g. a compiled
:class:`~ddpm_core.compiled.BucketedForward`) and one background thread. Jobs are submitted
with :meth:`Engine.submit` from any thread and get an :class:`EngineJob` handle. At every
*tick* the thread runs ONE batched forward over all jobs in flight
(:func:`ddpm_core.batching.denoise_step`) and advances each by one step; a job joins between
ticks and leaves as soon as it is done, cancelled or failed. Jobs with different samplers
(DDPM over all T steps, DDIM with any step count), step counts, digits, guidance scales and
seeds share the forward; a sample's result is what ``generate()`` gives it alone, up to float
noise.

Capacity. ``max_batch`` bounds the rows of one forward, unconditional copies included: a job
of n samples takes n rows, 2n with guidance (a job of unconditional samples needs no
unconditional copy, so n). A job whose rows alone exceed ``max_batch`` is admitted *alone*
when it reaches the head of the queue and nothing else runs, and its forward runs in chunks of
at most ``max_batch`` rows: memory stays bounded and its samples are those it would get in
one batch.

Admission policy: FIFO with conservative backfilling (EASY backfilling from batch
schedulers, exact here because every job's remaining steps are known). Before each tick:

1. Queued jobs are admitted in order while they fit the free rows.
2. When the head of the queue does not fit, it gets a reservation: the tick at which enough
   running jobs will have finished for it to fit (the *shadow* tick), and the rows that will
   still be spare at that tick beside it.
3. A job behind the head may then overtake it only if it fits now and either finishes by the
   shadow tick or fits in the spare rows. So overtaking never delays the head's start (counted
   in ticks; cancellations and failures only free rows earlier), no job starves, and small
   jobs still fill rows a strict FIFO would leave idle.

Threading. Callbacks (``on_start``, ``on_step``, the handle's done callbacks) run on the
engine thread, between forwards: keep them short (a slow callback delays every job). An
exception in a job's ``on_start`` or ``on_step`` fails that job only; the others continue. An
exception of the forward itself fails the jobs of that forward (none of them advanced) and the
engine goes on with the queue. Cancellation (:meth:`EngineJob.cancel`, any thread) takes
effect before the next tick: the job's rows are freed and it ends with
:class:`~ddpm_core.errors.GenerationCancelled`. :meth:`Engine.close` stops the thread; jobs
still queued or running end with :class:`EngineClosed` (or finish first, with ``drain=True``).

Torch only: no Redis, no Celery. A worker with several models runs one engine per model.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddpm_core.batching import Forward, denoise_step
from ddpm_core.compiled import DEFAULT_MAX_BATCH, BucketedForward, dummy_inputs
from ddpm_core.errors import GenerationCancelled
from ddpm_core.pipeline import Generation
from ddpm_core.samplers import SAMPLERS, DDIMSampler, DDPMSampler, make_sampler
from ddpm_core.schedule import NoiseSchedule
from worker.engine_job import EngineClosed, EngineJob, EngineRequest, EngineStats, JobTimeLimit, StepCallback

if TYPE_CHECKING:
    from ddpm_core.checkpoint import LoadedCheckpoint

logger = logging.getLogger(__name__)
__all__ = ["Engine", "EngineClosed", "EngineJob", "EngineRequest", "EngineStats", "JobTimeLimit", "StepCallback"]


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class Engine:
    """Step-level batching of generation jobs over one model, on one background thread.

    Args:
        model: eps_theta, in eval mode on its device.
        schedule: the model's training noise schedule (samplers are built from it).
        sample_shape: one sample's shape, e.g. (1, 28, 28).
        forward: the batched forward (default: the model); e.g. a
            :class:`~ddpm_core.compiled.BucketedForward` (see :meth:`from_checkpoint`).
        max_batch: rows per forward, unconditional copies included (see the module docstring);
            default: the forward's ``max_batch`` if it has one, else ``DEFAULT_MAX_BATCH`` for
            the model's device type.
        name: the thread's name, for logs.
        start: start the thread now; False lets a caller queue jobs first (:meth:`start`).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        *,
        sample_shape: Sequence[int],
        forward: Forward | None = None,
        max_batch: int | None = None,
        name: str = "ddpm-engine",
        start: bool = True,
    ) -> None:
        parameter = next(model.parameters())
        self.model = model
        self.schedule = schedule
        self.sample_shape = tuple(int(size) for size in sample_shape)
        self.device = parameter.device
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.forward: Forward = forward if forward is not None else model
        if max_batch is None:
            max_batch = getattr(forward, "max_batch", None) or DEFAULT_MAX_BATCH.get(self.device.type, 64)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = int(max_batch)
        self.name = name
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: deque[EngineJob] = deque()
        self._calls: deque[_Call] = deque()
        self._running: list[EngineJob] = []
        self._ids = itertools.count(1)
        self._samplers: dict[tuple[str, int | None, float], DDPMSampler | DDIMSampler] = {}
        self._closing = False
        self._drain = False
        self._stats = EngineStats(max_batch=self.max_batch)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        if start:
            self.start()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: LoadedCheckpoint,
        *,
        compile: bool = False,
        max_batch: int | None = None,
        name: str = "ddpm-engine",
        start: bool = True,
        **forward_options: Any,
    ) -> Engine:
        """An engine over a :class:`~ddpm_core.checkpoint.LoadedCheckpoint` with a
        :class:`~ddpm_core.compiled.BucketedForward` (``compile``, ``max_batch`` and the other
        ``forward_options``: mode, freezing, precision, buckets). Call :meth:`warmup` before
        reporting ready when compiling."""
        forward = BucketedForward(
            checkpoint.model,
            sample_shape=checkpoint.sample_shape,
            compile=compile,
            max_batch=max_batch,
            **forward_options,
        )
        return cls(
            checkpoint.model,
            checkpoint.schedule,
            sample_shape=checkpoint.sample_shape,
            forward=forward,
            max_batch=forward.max_batch,
            name=name,
            start=start,
        )

    # ----------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the engine thread (once)."""
        self._thread.start()

    def submit(
        self,
        request: EngineRequest,
        *,
        on_step: StepCallback | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> EngineJob:
        """Queue a job (any thread); returns its handle at once.

        Args:
            request: what to generate.
            on_step: called after each of the job's steps with its :class:`StepInfo` (tensors
                of this job only, (n, ...)), on the engine thread; raising fails the job.
            on_start: called when the job is admitted, before its first step, on the engine
                thread; raising fails the job.
        Raises:
            ValueError: a bad request (unknown sampler, step count, label out of range, ...).
            EngineClosed: the engine is closing.
        """
        if request.n < 1:
            raise ValueError("n must be at least 1")
        if request.eta and request.sampler != "ddim":
            raise ValueError("eta is for the ddim sampler only")
        if request.time_limit_s is not None and request.time_limit_s <= 0:
            raise ValueError("time_limit_s must be positive")
        if request.seeds is not None and len(request.seeds) != request.n:
            raise ValueError(f"{len(request.seeds)} seeds for {request.n} samples")
        labels = request.class_labels()
        for label in labels or ():
            if label is not None and not 0 <= int(label) < self.num_classes:
                # the null label num_classes is spelt None here
                raise ValueError(f"class label {label} out of range [0, {self.num_classes - 1}]")
        generation = Generation(
            self._sampler(request.sampler, request.steps, request.eta),
            sample_shape=self.sample_shape,
            num_samples=request.n,
            class_labels=labels,
            guidance_scale=request.guidance,
            seed=request.seed if request.seeds is None else [int(seed) for seed in request.seeds],
            device=self.device,
            num_classes=self.num_classes,
            skip_null_unconditional=True,
        )
        with self._lock:
            if self._closing:
                raise EngineClosed(f"engine {self.name} is closed")
            job = EngineJob(self, next(self._ids), request, generation, on_step, on_start)
            self._queue.append(job)
            self._stats.submitted += 1
            self._wakeup.notify()
        return job

    def queue_position(self, job: EngineJob) -> int | None:
        """0 for the head of the queue, 1 behind it, ...; None once admitted (or finished)."""
        with self._lock:
            for position, queued in enumerate(self._queue):
                if queued is job:
                    return position
        return None

    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        with self._lock:
            snapshot = dataclasses.replace(self._stats)
            snapshot.queued = len(self._queue)
            snapshot.running = len(self._running)
            snapshot.running_rows = sum(job.rows for job in self._running)
        snapshot.padded_rows = int(getattr(self.forward, "padded_rows", 0))
        snapshot.buckets_compiled = len(getattr(self.forward, "compiled_buckets", ()))
        snapshot.buckets_total = len(getattr(self.forward, "buckets", ()))
        return snapshot

    @property
    def closed(self) -> bool:
        """Whether the engine stopped accepting jobs (closing, closed or crashed)."""
        return self._closing

    def warmup(self, timeout: float | None = None) -> dict[int, float]:
        """Run the forward's ``warmup()`` (every bucket once: compiles, records CUDA graphs) on
        the engine thread; {bucket: seconds}. Empty when the forward has none."""
        warm = getattr(self.forward, "warmup", None)
        if warm is None:
            return {}
        return self.call_on_engine_thread(warm, timeout=timeout)

    def warmup_eager(self, timeout: float | None = None) -> float:
        """Run the model once, eagerly, on one dummy sample on the engine thread (proves that it
        runs, before jobs are sent to it); the seconds it took."""

        def run() -> float:
            started = time.perf_counter()
            sample, timesteps, labels = dummy_inputs(1, self.sample_shape, self.num_classes, self.device)
            self.model(sample, timesteps, labels)
            return time.perf_counter() - started

        return self.call_on_engine_thread(run, timeout=timeout)

    def call_on_engine_thread(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn()`` on the engine thread between ticks and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            return fn()
        call = _Call(fn)
        with self._lock:
            if self._thread.ident is None:
                raise RuntimeError(f"engine {self.name} is not started")
            if self._closing:
                raise EngineClosed(f"engine {self.name} is closed")
            self._calls.append(call)
            self._wakeup.notify()
        return call.future.result(timeout)

    def close(self, *, drain: bool = False, timeout: float | None = None) -> None:
        """Stop accepting jobs and stop the thread. Jobs still queued or running end with
        :class:`EngineClosed`, or (``drain=True``) run to the end first. Waits up to
        ``timeout`` seconds for the thread."""
        with self._lock:
            self._closing = True
            self._drain = drain
            self._wakeup.notify()
        if threading.current_thread() is self._thread:
            return  # called from a callback: the thread stops after this tick
        if self._thread.ident is not None:
            self._thread.join(timeout)
        else:  # never started: nothing runs the queue, end its jobs here
            self._drop_all(EngineClosed(f"engine {self.name} closed before it started"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- engine thread

    def _sampler(self, name: str, steps: int | None, eta: float) -> DDPMSampler | DDIMSampler:
        """Samplers are read-only once their timesteps are set, so jobs share them."""
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
        key = (name, steps, float(eta))
        with self._lock:
            sampler = self._samplers.get(key)
        if sampler is None:
            options = {"eta": float(eta)} if name == "ddim" else {}
            sampler = make_sampler(name, self.schedule, steps, **options)
            with self._lock:
                sampler = self._samplers.setdefault(key, sampler)
        return sampler

    def _wake(self) -> None:
        with self._lock:
            self._wakeup.notify()

    def _run(self) -> None:
        error: BaseException = EngineClosed(f"engine {self.name} closed before the job finished")
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException as crash:  # a bug in the engine itself: fail every job, refuse new ones
            logger.exception("engine %s crashed", self.name)
            error = EngineClosed(f"engine {self.name} crashed: {type(crash).__name__}: {crash}")
            error.__cause__ = crash
        finally:
            with self._lock:
                self._closing = True
                leftover = list(self._calls)
                self._calls.clear()
            for call in leftover:
                call.future.set_exception(EngineClosed(f"engine {self.name} is closed"))
            self._drop_all(error)
            logger.info("engine %s stopped", self.name)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._calls or self._queue or self._running or self._closing):
                    self._wakeup.wait()
                calls = list(self._calls)
                self._calls.clear()
                stop = self._closing and not (self._drain and (self._queue or self._running))
            for call in calls:
                self._run_call(call)
            if stop:
                return
            self._drop_cancelled()
            self._admit()
            if self._running:
                self._tick()

    @staticmethod
    def _run_call(call: _Call) -> None:
        try:
            call.future.set_result(call.fn())
        except BaseException as error:  # handed to the caller
            call.future.set_exception(error)

    def _drop_all(self, error: EngineClosed) -> None:
        with self._lock:
            jobs = [*self._running, *self._queue]
            self._running.clear()
            self._queue.clear()
        for job in jobs:
            self._end(job, "failed", error=error)

    def _drop_cancelled(self) -> None:
        """End the jobs cancelled or past their time limit before the next tick."""
        now = time.monotonic()
        with self._lock:
            ending = [
                job
                for job in (*self._running, *self._queue)
                if job.cancel_requested or (job.deadline is not None and now >= job.deadline)
            ]
            if not ending:
                return
            self._running = [job for job in self._running if job not in ending]
            self._queue = deque(job for job in self._queue if job not in ending)
        for job in ending:
            if job.cancel_requested:
                self._end(job, "cancelled", error=GenerationCancelled(job.step, job.total))
                continue
            limit = job.request.time_limit_s
            error = JobTimeLimit(
                f"the job ran past its time limit of {limit:g} s; stopped after {job.step} of {job.total} steps"
            )
            self._end(job, "failed", error=error)

    def _admit(self) -> None:
        """Move queued jobs into the running set (policy in the module docstring)."""
        admitted: list[EngineJob] = []
        with self._lock:
            if not self._queue:
                return
            free = self.max_batch - sum(job.rows for job in self._running)
            queue = list(self._queue)
            # 1. in order, while they fit (an oversized job fits only an empty engine)
            while queue and self._fits(queue[0], free, admitted):
                job = queue.pop(0)
                admitted.append(job)
                free -= job.rows
            # 2. the head's reservation and 3. backfilling behind it
            if queue and free > 0:
                shadow, spare = self._reservation(queue[0], admitted)
                for job in list(queue[1:]):
                    if job.rows > free or job.rows > self.max_batch:
                        continue
                    if job.total <= shadow:
                        pass
                    elif job.rows <= spare:
                        spare -= job.rows
                    else:
                        continue
                    queue.remove(job)
                    admitted.append(job)
                    free -= job.rows
            self._queue = deque(queue)
            self._running.extend(admitted)
            tick = self._stats.ticks
        for job in admitted:
            job._start(tick)
            if job._on_start is not None:
                try:
                    job._on_start()
                except Exception as error:
                    logger.exception("job %d: on_start failed", job.id)
                    self._fail_running(job, error)

    def _fits(self, job: EngineJob, free: int, admitted: list[EngineJob]) -> bool:
        if job.rows <= free:
            return True
        return job.rows > self.max_batch and not self._running and not admitted

    def _reservation(self, head: EngineJob, admitted: list[EngineJob]) -> tuple[int, int]:
        """(shadow, spare) for the blocked head of the queue: in how many ticks it fits (the
        jobs in flight finish in order of their remaining steps; an oversized head needs them
        all gone) and how many rows will then be spare beside it."""
        in_flight = sorted(
            [(job.total - job.step, job.rows) for job in self._running] + [(job.total, job.rows) for job in admitted]
        )
        used = sum(rows for _, rows in in_flight)
        oversized = head.rows > self.max_batch
        for remaining, rows in in_flight:
            used -= rows
            if oversized and used == 0:
                return remaining, 0
            if not oversized and self.max_batch - used >= head.rows:
                return remaining, self.max_batch - used - head.rows
        return 0, 0  # not reached: with nothing in flight the head fits

    def _tick(self) -> None:
        running = list(self._running)
        rows = sum(job.rows for job in running)
        started = time.perf_counter()
        forward_calls = 0

        def counted_forward(sample: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None):
            nonlocal forward_calls
            forward_calls += 1
            return self.forward(sample, timesteps, labels)

        try:
            results = denoise_step(
                [job.generation for job in running], counted_forward, max_batch=self.max_batch, return_exceptions=True
            )
        except Exception as error:  # the shared forward failed: none of its jobs advanced
            logger.exception("engine %s: forward over %d jobs (%d rows) failed", self.name, len(running), rows)
            for job in running:
                self._fail_running(job, error)
            return
        with self._lock:
            self._stats.ticks += 1
            self._stats.forward_calls += forward_calls
            self._stats.rows += rows
            self._stats.job_steps += len(running)
            self._stats.busy_seconds += time.perf_counter() - started
        for job, result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                self._fail_running(job, result)
                continue
            job.step = result.step
            if job._on_step is not None:
                try:
                    job._on_step(result)
                except Exception as error:
                    logger.warning("job %d: on_step failed: %s: %s", job.id, type(error).__name__, error)
                    self._fail_running(job, error)
                    continue
            if job.generation.done:
                with self._lock:
                    self._running.remove(job)
                self._end(job, "succeeded", result=job.generation.sample)

    def _fail_running(self, job: EngineJob, error: BaseException) -> None:
        with self._lock:
            if job in self._running:
                self._running.remove(job)
        self._end(job, "failed", error=error)

    def _end(
        self, job: EngineJob, status: str, result: torch.Tensor | None = None, error: BaseException | None = None
    ) -> None:
        with self._lock:
            setattr(self._stats, status, getattr(self._stats, status) + 1)
        job._finish(status, result, error)
