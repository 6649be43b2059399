"""Running one job's spec on its model's engine: the job's task thread hands the spec to the
engine, relays the engine's steps to Redis (progress, previews), polls for cancellation, runs
the check of the samples (:mod:`worker.check`: per class, redrawn samples going through the
same engine, or of points), and stores the PNG, the GIF, each sample's own PNG (image models)
and the check at the end.

Large jobs stay small on the wire and in memory: each GIF frame is shrunk as it is captured
(each grid at most :data:`GIF_GRID_SIDE` pixels on its longer side, Lanczos), each preview is a
PNG of at most :data:`PREVIEW_MAX_BYTES`, and the final grid is upscaled by whole pixels only
while it is small (:func:`~ddpm_core.render.display_scale`), so MNIST grids look as they did.

No torch here: the job tells the engine what it takes home (an
:class:`~worker.engine.outputs.OutputPlan`: its GIF frames, its previews, its final samples and the
classifier's reading of them), and the engine brings every job's due outputs to the host in one
copy per tick and hands them over as numpy arrays (:class:`~worker.engine.outputs.HostStep`,
:class:`~worker.engine.outputs.HostResult`). The job's own thread does only host work (GIF frames,
PNG and GIF encoding) and every Redis write, so a slow Redis never holds up the batch, and no
second OpenMP thread pool competes with the sampling one for the cores (on this 2-core CPU,
torch work on a second thread slowed the engine's forwards by a third). First draws and
redraws go through one helper, :func:`await_job`. Only worker processes import this module.
"""

from __future__ import annotations

import base64
import itertools
import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis.exceptions

from contract.layout import DigitCheck
from contract.settings import Settings
from contract.spec import JobSpec
from ddpm_core.errors import GenerationCancelled
from ddpm_core.render import (
    FrameRecorder,
    ScatterRecorder,
    bounded_png,
    display_scale,
    gif_bytes,
    make_grid,
    png_bytes,
    scatter_image,
)
from worker.check import Classifier, DigitChecker, Drawn, PointsMeasure, check_points, check_samples, skipped
from worker.engine import Engine, EngineRequest
from worker.engine.request_state import HostResult, HostStep, OutputPlan, Reader
from worker.engines import EnginePool
from worker.store import JobStore

logger = logging.getLogger(__name__)
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
FINISH_PATIENCE_S = 300.0  # how long a finished job waits for Redis to come back to store its result
# px, the longer side of each grid in a GIF frame: 64 MNIST digits (242) and 16 images of 64 x 64 (266) stay whole
GIF_GRID_SIDE = 272
PREVIEW_SIDE = 256  # px, the longer side of a preview (shrunk further while its PNG is too large)
PREVIEW_MAX_BYTES = 64 * 1024  # of a preview's PNG, before base64
SCATTER_PREVIEW_SIDE = 128  # px, a point model's preview


class JobChannel:
    """What the engine thread leaves for the job's thread: each step as host data. The job's
    thread turns them into GIF frames and preview updates (:meth:`take`), so the device thread
    only queues them."""

    def __init__(self, total: int, is_points: bool, settings: Settings) -> None:
        self.total = total
        self.is_points = is_points
        frames = settings.gif_frames
        self.recorder = (
            ScatterRecorder(total, frames) if is_points else FrameRecorder(total, frames, max_side=GIF_GRID_SIDE)
        )
        count = settings.preview_count
        every = max(1, total // count) if count else 0
        self.preview_steps = frozenset(range(every, total, every)) if every else frozenset()  # never the last
        self._steps: queue.SimpleQueue[HostStep] = queue.SimpleQueue()

    def plan(self, reader: Reader | None = None) -> OutputPlan:
        """What the engine copies to the host for this job: its frames, its previews, and (with
        ``reader``) the reading of its final samples."""
        return OutputPlan(frozenset(self.recorder.steps), self.preview_steps, reader)

    def on_output(self, info: HostStep) -> None:
        """On the device thread, after each step: queue it for the job's thread."""
        self._steps.put(info)

    def take(self, timeout: float) -> list[tuple[int, np.ndarray | None]]:
        """On the job's thread: the steps since the last call (waiting up to ``timeout`` s for the
        first), their frames kept; (step, preview or None) for each."""
        try:
            steps = [self._steps.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                steps.append(self._steps.get_nowait())
            except queue.Empty:
                break
        updates = []
        for info in steps:
            if info.sample is not None:
                self.recorder(info)
            preview = info.step in self.preview_steps
            updates.append((info.step, info.pred_original_sample if preview else None))
        return updates


class JobReporter:
    """Throttled progress events and previews of one job, written on the job's thread.

    A Redis outage drops progress events (logged), never the job."""

    def __init__(self, store: JobStore, job_id: str, channel: JobChannel, settings: Settings) -> None:
        self.store, self.job_id, self.channel = store, job_id, channel
        self.interval = settings.progress_interval_s
        self.started = time.perf_counter()
        self.last_sent = 0.0
        self.last_preview: float | None = None

    def publish(self, updates: list[tuple[int, np.ndarray | None]]) -> None:
        """Send the progress of ``updates`` and their previews, throttled: at most one of each
        per interval, the newest (a preview that waited is dropped for the newer one, so fast
        jobs do not spend their time encoding images nobody sees); with an interval of 0, every
        step and every preview."""
        if not updates:
            return
        total = self.channel.total
        now = time.perf_counter()
        every = self.interval == 0
        try:
            previews = [(step, preview) for step, preview in updates if preview is not None]
            if not every:
                due = self.last_preview is None or now - self.last_preview >= self.interval
                previews = previews[-1:] if due else []
            for step, preview in previews:
                self.store.event(self.job_id, "preview", {"step": step, "total": total, "image": self._png(preview)})
                self.last_preview = now
            for step in [step for step, _ in updates] if every else [updates[-1][0]]:
                if every or step == total or step == 1 or now - self.last_sent >= self.interval:
                    elapsed = now - self.started
                    self.store.progress(self.job_id, step, total, elapsed / step * (total - step), elapsed)
                    self.last_sent = now
        except REDIS_ERRORS as error:
            logger.warning("job %s: progress not sent (Redis: %s)", self.job_id, error)

    def _png(self, sample: np.ndarray) -> str:
        return "data:image/png;base64," + base64.b64encode(preview_png(sample, self.channel.is_points)).decode("ascii")


def preview_png(sample: np.ndarray, is_points: bool) -> bytes:
    """A preview's PNG: a scatter of points (n, 2), or a grid of 8-bit images (n, H, W, C) of at most
    :data:`PREVIEW_SIDE` pixels and :data:`PREVIEW_MAX_BYTES` bytes."""
    if is_points:
        return png_bytes(scatter_image(sample, SCATTER_PREVIEW_SIDE))
    return bounded_png(make_grid(sample), PREVIEW_MAX_BYTES, PREVIEW_SIDE)


def result_png(host: np.ndarray, is_points: bool) -> bytes:
    """The job's PNG: a scatter of points (n, 2), or the grid of 8-bit images (n, H, W, C), small grids upscaled."""
    if is_points:
        return png_bytes(scatter_image(host))
    grid = make_grid(host)
    scale = display_scale(grid.shape)
    return png_bytes(grid.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else grid)


class CancelPoll:
    """Asks Redis whether the job was cancelled, at most every ``interval`` seconds."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.1) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self._last = 0.0

    def __call__(self) -> bool:
        now = time.perf_counter()
        if now - self._last < self.interval:
            return False
        self._last = now
        try:
            return self.store.cancel_requested(self.job_id)
        except REDIS_ERRORS:
            return False


def public_message(error: BaseException, settings: Settings) -> str:
    """A job's error for its record: one line, without the server's directories."""
    message = f"{type(error).__name__}: {error}".splitlines()[0]
    directories = {Path(settings.model_dir)}
    if settings.checkpoint is not None:
        directories.add(Path(settings.checkpoint).parent)
    for directory in directories:
        for form in {str(directory), str(directory.resolve())}:
            message = message.replace(form.rstrip("/") + "/", "")
    return message


def await_job(
    engine: Engine,
    request: EngineRequest,
    plan: OutputPlan,
    cancel: CancelPoll,
    on_output: Callable[[HostStep], None] | None = None,
    while_waiting: Callable[[], None] | None = None,
    poll_s: float = 0.1,
) -> HostResult:
    """Submit ``request`` with ``plan`` and wait for its host result; every ``poll_s`` seconds
    (and once more at the end) run ``while_waiting`` (the first draw publishes its progress
    there) and cancel the job when ``cancel`` says so. The job's thread wakes on that clock, not
    at every step, so sixteen waiting jobs do not contend with the device thread at every tick.

    Raises the job's error (:class:`GenerationCancelled` after a cancellation)."""
    handle = engine.submit(request, outputs=plan, on_output=on_output)
    while not handle.wait(poll_s):
        if while_waiting is not None:
            while_waiting()
        if cancel():
            handle.cancel()
    if while_waiting is not None:
        while_waiting()
    return handle.host_result()


def run_job(
    settings: Settings,
    store: JobStore,
    engines: EnginePool,
    job_id: str,
    spec: JobSpec,
    checker: DigitChecker | None = None,
) -> str:
    """Generate the job's samples exactly as its spec says, check them with ``checker`` (None:
    no check) and store PNG, GIF and the check; the final status.

    Raises nothing for job errors: they end the job ``failed`` with their message."""
    started = time.perf_counter()
    check: DigitCheck | None = None
    try:
        loaded, engine = engines.for_spec(spec)
        found = None if checker is None else checker.for_model(loaded)
        channel = JobChannel(spec.steps, tuple(loaded.sample_shape) == (2,), settings)
        request = EngineRequest.from_spec(spec, time_limit_s=settings.max_job_s)
        reporter = JobReporter(store, job_id, channel, settings)
        cancel = CancelPoll(store, job_id)
        result = await_job(
            engine,
            request,
            channel.plan(found.readings if isinstance(found, Classifier) else None),
            cancel,
            on_output=channel.on_output,
            while_waiting=lambda: reporter.publish(channel.take(timeout=0)),
            poll_s=min(0.1, max(settings.progress_interval_s, 0.02)),
        )
        samples = result.samples  # host arrays: (n, H, W, C) uint8 images or (n, 2) float32 points
        if found is not None:
            deadline = started + settings.max_job_s
            samples, check = check_result(found, engine, spec, result, store, job_id, cancel, deadline)
        png, gif = result_png(samples, channel.is_points), gif_bytes(channel.recorder.frames)
        images = None if channel.is_points else [png_bytes(image) for image in samples]  # one PNG per sample
    except GenerationCancelled as cancelled:
        done_steps = cancelled.step
        _patiently(lambda: store.cancelled(job_id, done_steps), job_id)
        logger.info("job %s cancelled after %d steps", job_id, done_steps)
        return "cancelled"
    except Exception as error:  # a job's failure must not take the worker down
        message = public_message(error, settings)
        logger.exception("job %s failed", job_id)
        _patiently(lambda: store.fail(job_id, message), job_id)
        return "failed"
    seconds = time.perf_counter() - started
    _patiently(lambda: store.succeed(job_id, png, gif, seconds, check, images), job_id)
    logger.info("job %s succeeded in %.2f s (%s, %d steps, n=%d)", job_id, seconds, spec.sampler, spec.steps, spec.n)
    return "succeeded"


def check_result(
    found: Classifier | PointsMeasure | str,
    engine: Engine,
    spec: JobSpec,
    result: HostResult,
    store: JobStore,
    job_id: str,
    cancel: CancelPoll,
    deadline: float,
) -> tuple[np.ndarray, DigitCheck]:
    """The job's final host samples and their check; redraws run on ``engine`` beside other jobs
    (through :func:`await_job`, read on the engine as the first draw was).

    A check that fails leaves the samples unchecked (the job still succeeds, its check says
    why); a redraw that fails or is cancelled ends the job as the first draw would have."""
    samples = result.samples
    if isinstance(found, str):
        return samples, skipped(found)
    if isinstance(found, PointsMeasure):
        try:
            return samples, check_points(found, samples)
        except Exception as error:
            logger.exception("job %s: the points check failed", job_id)
            return samples, skipped(f"the check failed: {type(error).__name__}")
    if result.readings is None:
        logger.error("job %s: the per-class check failed: %s", job_id, result.reading_error)
        reason = (result.reading_error or "no reading").split(":")[0]
        return samples, skipped(f"the check failed: {reason}")
    rounds = itertools.count(1)
    redraw_errors: list[BaseException] = []

    def redraw(indices: list[int], seeds: list[int]) -> Drawn:
        round_ = next(rounds)
        try:
            store.event(job_id, "redraw", {"round": round_, "samples": indices, "seeds": seeds})
        except REDIS_ERRORS as error:
            logger.warning("job %s: redraw event not sent (Redis: %s)", job_id, error)
        request = EngineRequest.from_spec(
            spec, time_limit_s=max(deadline - time.perf_counter(), 1e-3), seeds=tuple(seeds)
        )
        try:
            fresh = await_job(engine, request, OutputPlan(reader=found.readings), cancel)
            if fresh.readings is None:
                raise RuntimeError(f"the redraw's reading failed: {fresh.reading_error}")
        except BaseException as error:
            redraw_errors.append(error)
            raise
        return Drawn.from_readings(fresh.samples, fresh.readings)

    try:
        return check_samples(found, spec, Drawn.from_readings(samples, result.readings), redraw)
    except Exception as error:
        if redraw_errors:
            raise
        logger.exception("job %s: the per-class check failed", job_id)
        return samples, skipped(f"the check failed: {type(error).__name__}")


def _patiently(finish, job_id: str) -> None:
    """Record a job's end, waiting out a Redis outage (up to :data:`FINISH_PATIENCE_S`)."""
    deadline = time.monotonic() + FINISH_PATIENCE_S
    while True:
        try:
            finish()
            return
        except REDIS_ERRORS as error:
            if time.monotonic() > deadline:
                raise
            logger.warning("job %s: cannot record its end yet (Redis: %s); retrying", job_id, error)
            time.sleep(1.0)
