"""The worker's inference engine: step-level batching of generation jobs over one model.

An :class:`Engine` owns one model (and its forward, e.g. a compiled
:class:`~ddpm_core.compiled.BucketedForward`) and takes turns on its device's one thread
(:class:`~worker.engine.device_thread.DeviceThread`). Jobs are submitted from any thread
(:meth:`Engine.submit`, an :class:`EngineJob` handle back). Each *tick* runs ONE forward over
every job in flight and advances each by one step; jobs of any sampler, step count, class,
guidance and seed share it, join between ticks and leave when done, cancelled or failed. A
sample's result is what ``generate()`` gives it alone, up to float noise.

One responsibility per module, as vLLM's v1 engine splits: :mod:`worker.engine.request_state` (the
request, its output plan and host data, each job's state and handle), :mod:`worker.engine.scheduler`
(admission on plain integers: the row cap, FIFO with conservative backfilling),
:mod:`worker.engine.executor` (one tick's forward and vectorised step, one upload),
:mod:`worker.engine.outputs` (the tick's outputs to the host, one copy) and this core: schedule,
execute, update, emit.

Threading. Callbacks (``on_start``, ``on_step``, ``on_output``, the handle's done callbacks)
run on the device thread between ticks: keep them short. A callback's exception fails its job
only; the forward's fails that tick's jobs. A cancellation or a time limit
(``EngineRequest.time_limit_s``) takes effect before the next tick. :meth:`Engine.close` ends
the jobs left with :class:`EngineClosed` (or finishes them first, ``drain=True``).

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
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddpm_core.batching import Forward
from ddpm_core.compiled import DEFAULT_MAX_BATCH, BucketedForward
from ddpm_core.errors import GenerationCancelled
from ddpm_core.schedule import NoiseSchedule
from worker.engine.device_thread import DeviceThread
from worker.engine.executor import StepExecutor, TickTimer, is_fatal_device_error
from worker.engine.outputs import JobOutput, OutputProcessor
from worker.engine.request_state import (
    EngineCall,
    EngineClosed,
    EngineJob,
    EngineRequest,
    HostStep,
    JobState,
    JobStatus,
    JobTimeLimit,
    LiveJob,
    OutputPlan,
    StepCallback,
)
from worker.engine.scheduler import Drop, Scheduler
from worker.engine.stats import EngineStats

if TYPE_CHECKING:
    from ddpm_core.checkpoint import LoadedCheckpoint

ROW_AVERAGE = 0.2  # the weight of the newest tick in EngineStats.row_seconds

logger = logging.getLogger(__name__)


class Engine:
    """Step-level batching of generation jobs over one model, in turns on its device's thread.

    Args:
        model: eps_theta, in eval mode on its device.
        schedule: the model's training noise schedule (samplers are built from it).
        sample_shape: one sample's shape, e.g. (1, 28, 28).
        forward: the batched forward (default: the model); e.g. a
            :class:`~ddpm_core.compiled.BucketedForward` (see :meth:`from_checkpoint`).
        max_batch: rows per forward, unconditional copies included (see the module docstring);
            default: the forward's ``max_batch`` if it has one, else ``DEFAULT_MAX_BATCH`` for
            the model's device type.
        name: the engine's name, for logs (and its thread's, when it has one of its own).
        start: start taking turns now; False lets a caller queue jobs first (:meth:`start`).
        on_fatal: called with a forward's error that leaves the device unusable (a CUDA error
            but out-of-memory: :func:`~worker.engine.executor.is_fatal_device_error`) after its jobs
            failed; a worker ends its process there, so that it is restarted.
        device_thread: the thread that drives every engine on this device, shared
            (:class:`~worker.engine.device_thread.DeviceThread`); None: a thread of its own.
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
        on_fatal: Callable[[BaseException], None] | None = None,
        device_thread: DeviceThread | None = None,
    ) -> None:
        parameter = next(model.parameters())
        self.on_fatal = on_fatal
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
        self._executor = StepExecutor(schedule, self.sample_shape, self.device, self.num_classes, self.max_batch)
        self._outputs = OutputProcessor(self.sample_shape, self.device)
        # the lock guards the scheduler, the live jobs, the calls, the flags and the counters
        self._lock = threading.Lock()
        self._scheduler = Scheduler(self.max_batch)
        self._live_jobs: dict[int, LiveJob] = {}
        self._calls: deque[EngineCall] = deque()
        self._job_ids = itertools.count(1)
        self._closing = False
        self._drain = False
        self._stats = EngineStats(max_batch=self.max_batch)
        self._driver = device_thread if device_thread is not None else DeviceThread(name)
        self._started = False
        self._stopped = threading.Event()
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
        model, shape = checkpoint.model, checkpoint.sample_shape
        forward = BucketedForward(model, sample_shape=shape, compile=compile, max_batch=max_batch, **forward_options)
        return cls(model, checkpoint.schedule, sample_shape=shape, forward=forward, name=name, start=start)

    # ----------------------------------------------------------------- public API

    def start(self) -> None:
        """Start taking turns on the device thread (once)."""
        with self._lock:
            if self._started:
                raise RuntimeError(f"engine {self.name} is already started")
            self._started = True
        self._driver.attach(self)

    def submit(
        self,
        request: EngineRequest,
        *,
        on_step: StepCallback | None = None,
        on_start: Callable[[], None] | None = None,
        outputs: OutputPlan | None = None,
        on_output: Callable[[HostStep], None] | None = None,
    ) -> EngineJob:
        """Queue a job (any thread); returns its handle at once.

        Args:
            request: what to generate.
            on_step: called after each of the job's steps with its :class:`StepInfo` (device
                tensors of this job only, (n, ...)), on the engine thread; raising fails the job.
            on_start: called when the job is admitted, before its first step, on the engine
                thread; raising fails the job.
            outputs: what the job takes to the host (frames, previews, its final samples and
                their reading), gathered with every other job's into one copy per tick; the
                final host data is :meth:`EngineJob.host_result`.
            on_output: called after each step with its :class:`HostStep` (host arrays only
                where ``outputs`` asked for them), on the engine thread; raising fails the job.
        Raises:
            ValueError: a bad request (unknown sampler, step count, label out of range, ...).
            EngineClosed: the engine is closing.
        """
        generation = self._executor.prepare(request)
        with self._lock:
            if self._closing:
                raise EngineClosed(f"engine {self.name} is closed")
            state = JobState(next(self._job_ids), request, rows=generation.forward_rows, total=generation.total)
            job = EngineJob(state, self._request_cancel)
            self._live_jobs[state.id] = LiveJob(job, generation, on_step, on_start, outputs, on_output)
            self._scheduler.add(state.id, state.rows, state.total, state.deadline)
            self._stats.submitted += 1
        self._driver.wake()
        return job

    def queue_position(self, job: EngineJob) -> int | None:
        """0 for the head of the queue, 1 behind it, ...; None once admitted (or finished)."""
        with self._lock:
            live = self._live_jobs.get(job.id)
            return self._scheduler.queue_position(job.id) if live is not None and live.job is job else None

    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        with self._lock:
            snapshot = dataclasses.replace(self._stats)
            snapshot.queued = len(self._scheduler.queued)
            snapshot.running = len(self._scheduler.running)
            snapshot.running_rows = self._scheduler.running_rows
        snapshot.padded_rows = int(getattr(self.forward, "padded_rows", 0))
        snapshot.buckets_compiled = len(getattr(self.forward, "compiled_buckets", ()))
        snapshot.buckets_total = len(getattr(self.forward, "buckets", ()))
        return snapshot

    @property
    def device_thread(self) -> DeviceThread:
        """The thread that drives this engine (shared with the other engines of its device)."""
        return self._driver

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
        return self.call_on_engine_thread(lambda: self._executor.probe(self.model), timeout=timeout)

    def call_on_engine_thread(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn()`` on the device thread between ticks and return its result (or raise its error)."""
        if self._driver.is_current():
            return fn()
        call = EngineCall(fn)
        with self._lock:
            if not self._started:
                raise RuntimeError(f"engine {self.name} is not started")
            if self._closing:
                raise EngineClosed(f"engine {self.name} is closed")
            self._calls.append(call)
        self._driver.wake()
        return call.future.result(timeout)

    def close(self, *, drain: bool = False, timeout: float | None = None) -> None:
        """Stop accepting jobs and leave the device thread. Jobs still queued or running end with
        :class:`EngineClosed`, or (``drain=True``) run to the end first. Waits up to
        ``timeout`` seconds for the engine to stop."""
        with self._lock:
            self._closing = True
            self._drain = drain
            started = self._started
        if not started:  # never started: nothing runs the queue, end its jobs here
            self._drop_all(EngineClosed(f"engine {self.name} closed before it started"))
            self._stopped.set()
            return
        self._driver.wake()
        if self._driver.is_current():
            return  # called from a callback: the engine stops at its next turn
        self._stopped.wait(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the engine to stop (closed or crashed); whether it has."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- engine thread

    def _request_cancel(self, job_id: int) -> None:
        """A handle's cancel (any thread): the scheduler drops the job before the next tick."""
        with self._lock:
            self._scheduler.cancel(job_id)
        self._driver.wake()

    def wants_turn(self) -> bool:
        """Whether the engine has calls, jobs or a close to act on (the device thread asks)."""
        with self._lock:
            return bool(self._calls or self._scheduler.has_work or self._closing)

    def turn(self) -> bool:
        """One turn on the device thread: the pending calls, then one tick (schedule, execute,
        update, emit); False once the engine has stopped (closed, or crashed: a bug in the
        engine itself fails every job it holds and refuses new ones)."""
        try:
            with self._lock:
                calls = list(self._calls)
                self._calls.clear()
                stop = self._closing and not (self._drain and self._scheduler.has_work)
            for call in calls:
                call.run()
            if stop:
                self._stop(EngineClosed(f"engine {self.name} closed before the job finished"))
                return False
            running = self._schedule()
            if running:
                self._tick(running)
            return True
        except BaseException as crash:
            logger.exception("engine %s crashed", self.name)
            error = EngineClosed(f"engine {self.name} crashed: {type(crash).__name__}: {crash}")
            error.__cause__ = crash
            self._stop(error)
            return False

    def _stop(self, error: EngineClosed) -> None:
        """End the engine: refuse new jobs and calls, end every job still held with ``error``."""
        with self._lock:
            self._closing = True
            leftover = list(self._calls)
            self._calls.clear()
        for call in leftover:
            call.future.set_exception(EngineClosed(f"engine {self.name} is closed"))
        self._drop_all(error)
        self._stopped.set()
        logger.info("engine %s stopped", self.name)

    def _schedule(self) -> list[LiveJob]:
        """Schedule: end the jobs the scheduler dropped (cancelled, past their time limit),
        start the ones it admitted; the jobs of the next tick."""
        with self._lock:
            decision = self._scheduler.schedule(time.monotonic())
            dropped = [(self._live_jobs[job_id], reason) for job_id, reason in decision.dropped]
            admitted = [self._live_jobs[job_id] for job_id in decision.admitted]
            tick = self._stats.ticks
        for live, reason in dropped:
            state = live.job.state
            if reason is Drop.CANCELLED:
                self._end(live, JobStatus.CANCELLED, error=GenerationCancelled(state.step, state.total))
                continue
            self._end(live, JobStatus.FAILED, error=JobTimeLimit.stopped(state))
        for live in admitted:
            live.job.set_running(tick)
            if live.on_start is not None:
                try:
                    live.on_start()
                except Exception as error:
                    logger.exception("job %d: on_start failed", live.job.id)
                    self._end(live, JobStatus.FAILED, error=error)
        with self._lock:
            return [self._live_jobs[job.id] for job in self._scheduler.running]

    def _tick(self, running: list[LiveJob]) -> None:
        """Execute one forward over ``running``, bring their outputs to the host in one copy,
        update their state, call their callbacks."""
        rows = sum(live.job.rows for live in running)
        timer = TickTimer(self.device)
        try:
            timer.start()
            output = self._executor.step([live.generation for live in running], self.forward)
            host = self._outputs.for_jobs(running, output.results)
            seconds = timer.stop()  # on a GPU: the tick's one wait (the copy above already waited)
        except Exception as error:  # the shared forward failed: none of its jobs advanced
            logger.exception("engine %s: forward over %d jobs (%d rows) failed", self.name, len(running), rows)
            for live in running:
                self._end(live, JobStatus.FAILED, error=error)
            if self.on_fatal is not None and is_fatal_device_error(error):
                self.on_fatal(error)  # a sticky device error: every later tick would fail too
            return
        with self._lock:
            self._stats.ticks += 1
            self._stats.forward_calls += output.forward_calls
            self._stats.rows += rows
            self._stats.job_steps += len(running)
            self._stats.busy_seconds += seconds
            self._stats.forward_seconds += output.forward_seconds
            per_row, recent = seconds / max(rows, 1), self._stats.row_seconds
            self._stats.row_seconds = per_row if not recent else (1 - ROW_AVERAGE) * recent + ROW_AVERAGE * per_row
            self._stats.host_copies = self._outputs.copies
            self._stats.host_bytes = self._outputs.bytes
            self._scheduler.advance()
        for live, result in zip(running, output.results, strict=True):
            if isinstance(result, BaseException):
                self._end(live, JobStatus.FAILED, error=result)
                continue
            live.job.state.step = result.step
            taken = host.get(live.job.id)
            try:
                if live.on_step is not None:
                    live.on_step(result)
                if live.on_output is not None and taken is not None:
                    live.on_output(taken.step)
            except Exception as error:
                logger.warning("job %d: a step callback failed: %s: %s", live.job.id, type(error).__name__, error)
                self._end(live, JobStatus.FAILED, error=error)
                continue
            if live.generation.done:
                self._end(live, JobStatus.SUCCEEDED, result=live.generation.sample, host=taken)

    def _drop_all(self, error: EngineClosed) -> None:
        """End every job still held: running ones, queued ones, then any the scheduler let go."""
        with self._lock:
            order = dict.fromkeys([*self._scheduler.clear(), *self._live_jobs])
            ending = [self._live_jobs[job_id] for job_id in order]
        for live in ending:
            self._end(live, JobStatus.FAILED, error=error)

    def _end(
        self,
        live: LiveJob,
        status: JobStatus,
        result: torch.Tensor | None = None,
        error: BaseException | None = None,
        host: JobOutput | None = None,
    ) -> None:
        """Update state and emit: the job leaves the scheduler (its rows are free for the next
        tick) and the engine, and its handle gets its outcome (done callbacks run here)."""
        with self._lock:
            self._scheduler.finish(live.job.id)
            self._live_jobs.pop(live.job.id, None)
            setattr(self._stats, status.value, getattr(self._stats, status.value) + 1)
        live.job.set_outcome(status, result, error, None if host is None else host.result)
