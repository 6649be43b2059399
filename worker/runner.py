"""Running one job's spec with torch: progress events, previews, GIF frames, the results.

Only worker processes import this module.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

from contract.settings import Settings
from contract.spec import JobSpec
from ddpm_core.checkpoint import LoadedCheckpoint
from ddpm_core.errors import GenerationCancelled
from ddpm_core.pipeline import StepInfo, generate
from ddpm_core.render import FrameRecorder, ScatterRecorder, gif_bytes, make_grid, png_bytes, scatter_image
from ddpm_core.samplers import make_sampler
from worker.models import ModelCache
from worker.store import JobStore

logger = logging.getLogger(__name__)


class JobProgress:
    """Generation callback: throttled progress events, small previews and GIF frames."""

    def __init__(self, store: JobStore, job_id: str, total: int, is_points: bool, settings: Settings) -> None:
        self.store, self.job_id, self.total, self.is_points = store, job_id, total, is_points
        self.recorder = (
            ScatterRecorder(total, settings.gif_frames) if is_points else FrameRecorder(total, settings.gif_frames)
        )
        self.interval = settings.progress_interval_s
        count = settings.preview_count
        self.preview_every = max(1, total // count) if count else 0
        self.started = time.perf_counter()
        self.last_sent = 0.0

    def __call__(self, info: StepInfo) -> None:
        self.recorder(info)
        now = time.perf_counter()
        elapsed = now - self.started
        if info.step == info.total or now - self.last_sent >= self.interval or info.step == 1:
            eta = elapsed / info.step * (info.total - info.step)
            self.store.progress(self.job_id, info.step, info.total, eta, elapsed)
            self.last_sent = now
        if self.preview_every and (info.step % self.preview_every == 0) and info.step < info.total:
            sample = info.pred_original_sample
            image = scatter_image(sample, 128) if self.is_points else make_grid(sample)
            data = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
            self.store.event(self.job_id, "preview", {"step": info.step, "total": info.total, "image": data})


class CancelPoll:
    """``should_stop`` for :func:`generate`: asks Redis at most every ``interval`` seconds."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.05) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self._last = 0.0
        self._requested = False

    def __call__(self) -> bool:
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last, self._requested = now, self.store.cancel_requested(self.job_id)
        return self._requested


def render_results(samples, loaded: LoadedCheckpoint, progress: JobProgress) -> tuple[bytes, bytes]:
    """PNG grid (or scatter plot) and denoising GIF of a finished job; samples (n, *shape)."""
    grid = scatter_image(samples) if progress.is_points else make_grid(samples, scale=2)
    return png_bytes(grid), gif_bytes(progress.recorder.frames)


def public_message(error: Exception, settings: Settings) -> str:
    """A job's error for its record: one line, without the server's directories."""
    message = f"{type(error).__name__}: {error}".splitlines()[0]
    directories = {Path(settings.model_dir)}
    if settings.checkpoint is not None:
        directories.add(Path(settings.checkpoint).parent)
    for directory in directories:
        for form in {str(directory), str(directory.resolve())}:
            message = message.replace(form.rstrip("/") + "/", "")
    return message


def run_job(settings: Settings, store: JobStore, models: ModelCache, job_id: str, spec: JobSpec) -> str:
    """Generate the job's samples exactly as its spec says and store PNG and GIF; the final status.

    Raises nothing for job errors: they end the job ``failed`` with their message."""
    started = time.perf_counter()
    try:
        loaded = models.for_spec(spec)
        sampler = make_sampler(spec.sampler, loaded.schedule, spec.steps)
        progress = JobProgress(store, job_id, spec.steps, tuple(loaded.sample_shape) == (2,), settings)
        samples = generate(
            loaded.model,
            sampler,
            sample_shape=loaded.sample_shape,
            num_samples=spec.n,
            class_labels=spec.class_labels,
            guidance_scale=spec.guidance,
            seed=spec.seed,
            callback=progress,
            should_stop=CancelPoll(store, job_id),
        )
        png, gif = render_results(samples, loaded, progress)
    except GenerationCancelled as cancelled:
        store.cancelled(job_id, cancelled.step)
        logger.info("job %s cancelled after %d steps", job_id, cancelled.step)
        return "cancelled"
    except Exception as error:  # a job's failure must not take the worker down
        message = public_message(error, settings)
        logger.exception("job %s failed", job_id)
        store.fail(job_id, message)
        return "failed"
    seconds = time.perf_counter() - started
    store.succeed(job_id, png, gif, seconds)
    logger.info("job %s succeeded in %.2f s (%d steps, n=%d)", job_id, seconds, spec.steps, spec.n)
    return "succeeded"
