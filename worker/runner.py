"""Running one job's spec on its model's engine: the job's task thread hands the spec to the
engine, waits for it (the process's :class:`~worker.progress.JobWatch` publishes its progress
and previews and cancels it when asked), runs the check of the samples (:mod:`worker.check`:
per class, redrawn samples going through the same engine, or of points), and stores the PNG, the
GIF, each sample's own PNG (image models) and the check at the end.

Large jobs stay small on the wire and in memory: each GIF frame is shrunk as it is captured
(:mod:`worker.progress`), each preview is a bounded PNG, and the final grid is upscaled by whole
pixels only while it is small (:func:`~ddpm_core.render.display_scale`), so MNIST grids look as
they did.

No torch here: the job tells the engine what it takes home (an
:class:`~worker.engine.request_state.OutputPlan`: its GIF frames, its previews, its final samples
and the classifier's reading of them), and the engine brings every job's due outputs to the
host in one copy per tick and hands them over as numpy arrays. The job's own thread does only
host work (PNG and GIF encoding) and its Redis writes, so a slow Redis never holds up the batch,
and no second OpenMP thread pool competes with the sampling one for the cores. First draws and
redraws go through one helper, :func:`await_job`. Only worker processes import this module.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np

from contract.layout import DigitCheck, JobTimings
from contract.settings import Settings
from contract.spec import JobSpec
from ddpm_core.errors import GenerationCancelled
from ddpm_core.render import (
    display_scale,
    gif_bytes,
    make_grid,
    png_bytes,
    scatter_image,
)
from worker.check import Classifier, DigitChecker, Drawn, PointsMeasure, check_points, check_samples, skipped
from worker.engine import Engine, EngineRequest
from worker.engine.request_state import HostResult, OutputPlan
from worker.engines import EnginePool
from worker.progress import REDIS_ERRORS, JobChannel, JobReporter, JobWatch
from worker.store import JobStore

logger = logging.getLogger(__name__)
FINISH_PATIENCE_S = 300.0  # how long a finished job waits for Redis to come back to store its result


def result_png(host: np.ndarray, is_points: bool) -> bytes:
    """The job's PNG: a scatter of points (n, 2), or the grid of 8-bit images (n, H, W, C), small grids upscaled."""
    if is_points:
        return png_bytes(scatter_image(host))
    grid = make_grid(host)
    scale = display_scale(grid.shape)
    return png_bytes(grid.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else grid)


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
    watch: JobWatch,
    job_id: str,
    reporter: JobReporter | None = None,
) -> HostResult:
    """Submit ``request`` with ``plan``, have ``watch`` publish its progress (``reporter``) and
    cancel it when asked, and wait for its host result; what is left of its progress is
    published before this returns. First draws and redraws alike.

    Raises the job's error (:class:`GenerationCancelled` after a cancellation)."""
    on_output = None if reporter is None else reporter.channel.on_output
    handle = engine.submit(request, outputs=plan, on_output=on_output)
    watch.watch(job_id, handle.cancel, reporter)
    try:
        handle.wait()
    finally:
        watch.finish(job_id)
    return handle.host_result()


def run_job(
    settings: Settings,
    store: JobStore,
    engines: EnginePool,
    job_id: str,
    spec: JobSpec,
    watch: JobWatch,
    checker: DigitChecker | None = None,
) -> str:
    """Generate the job's samples exactly as its spec says, check them with ``checker`` (None:
    no check) and store PNG, GIF and the check; the final status.

    Raises nothing for job errors: they end the job ``failed`` with their message."""
    started = time.perf_counter()
    check: DigitCheck | None = None
    marks = [started]  # the ends of the phases of JobTimings
    try:
        loaded, engine = engines.for_spec(spec)
        found = None if checker is None else checker.for_model(loaded)
        marks.append(time.perf_counter())
        channel = JobChannel(spec.steps, tuple(loaded.sample_shape) == (2,), settings)
        request = EngineRequest.from_spec(spec, time_limit_s=settings.max_job_s)
        reporter = JobReporter(job_id, channel, settings)
        plan = channel.plan(found.readings if isinstance(found, Classifier) else None)
        result = await_job(engine, request, plan, watch, job_id, reporter)
        marks.append(time.perf_counter())
        samples = result.samples  # host arrays: (n, H, W, C) uint8 images or (n, 2) float32 points
        if found is not None:
            deadline = started + settings.max_job_s
            samples, check = check_result(found, engine, spec, result, store, job_id, watch, deadline)
        marks.append(time.perf_counter())
        png, gif = result_png(samples, channel.is_points), gif_bytes(channel.recorder.frames)
        images = None if channel.is_points else [png_bytes(image) for image in samples]  # one PNG per sample
        marks.append(time.perf_counter())
        load, generate, checking, encode = (round(b - a, 4) for a, b in zip(marks, marks[1:], strict=False))
        timings = JobTimings(load_s=load, generate_s=generate, check_s=checking, encode_s=encode)
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
    _patiently(lambda: store.succeed(job_id, png, gif, seconds, check, images, timings), job_id)
    logger.info("job %s succeeded in %.2f s (%s, %d steps, n=%d)", job_id, seconds, spec.sampler, spec.steps, spec.n)
    return "succeeded"


def check_result(
    found: Classifier | PointsMeasure | str,
    engine: Engine,
    spec: JobSpec,
    result: HostResult,
    store: JobStore,
    job_id: str,
    watch: JobWatch,
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
            fresh = await_job(engine, request, OutputPlan(reader=found.readings), watch, job_id)
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
