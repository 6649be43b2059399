"""Running one generation job with torch: model cache, device choice, progress, results.

Only worker processes import this module. CUDA is touched first inside :func:`pick_device`,
called from a task in the pool process, never in a process that forks afterwards.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from api.registry import ModelRegistry
from api.settings import Settings
from ddpm_core.checkpoint import LoadedCheckpoint, load_checkpoint
from ddpm_core.pipeline import GenerationCancelled, StepInfo, generate
from ddpm_core.render import FrameRecorder, ScatterRecorder, gif_bytes, make_grid, png_bytes, scatter_image
from ddpm_core.samplers import make_sampler
from worker.jobs import JobStore

logger = logging.getLogger(__name__)

_models: dict[str, LoadedCheckpoint] = {}  # weights sha256 -> model, per worker process
_models_lock = threading.Lock()


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; or the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cached_model(settings: Settings, registry: ModelRegistry, name: str | None) -> tuple[str, LoadedCheckpoint]:
    """The named model, loaded once per process and cached by weights hash."""
    info = registry.get(name)
    with _models_lock:
        loaded = _models.get(info.weights_sha256)
        if loaded is None:
            started = time.perf_counter()
            loaded = load_checkpoint(info.path, device=pick_device(settings.device))
            _models[loaded.weights_sha256] = loaded
            logger.info(
                "loaded model %s (%s) in %.2f s", info.name, loaded.weights_sha256[:12], time.perf_counter() - started
            )
    return info.name, loaded


@dataclass
class JobOutcome:
    status: str
    seconds: float


class _Progress:
    """Generation callback: throttled progress events, small previews, GIF frames, heartbeat."""

    def __init__(
        self, store: JobStore, job_id: str, total: int, recorder: FrameRecorder, is_points: bool, settings: Settings
    ) -> None:
        self.store, self.job_id, self.total, self.recorder = store, job_id, total, recorder
        self.is_points = is_points
        self.interval = settings.progress_interval_s
        count = settings.preview_count
        self.preview_every = max(1, total // count) if count else 0
        self.started = time.perf_counter()
        self.last_sent = 0.0
        self.step = 0

    def __call__(self, info: StepInfo) -> None:
        self.step = info.step
        self.recorder(info)
        now = time.perf_counter()
        elapsed = now - self.started
        if info.step == info.total or now - self.last_sent >= self.interval or info.step == 1:
            eta = elapsed / info.step * (info.total - info.step)
            self.store.progress(self.job_id, info.step, info.total, eta, elapsed)
            self.last_sent = now
        if self.preview_every and (info.step % self.preview_every == 0) and info.step < info.total:
            image = (
                scatter_image(info.pred_original_sample, 128)
                if self.is_points
                else make_grid(info.pred_original_sample)
            )
            data = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
            self.store.event(self.job_id, "preview", {"step": info.step, "total": info.total, "image": data})


def run_job(settings: Settings, store: JobStore, registry: ModelRegistry, job_id: str, params: dict[str, Any]) -> str:
    """Generate the job's samples and store PNG and GIF; returns the final status.

    Raises nothing for job errors: they end the job ``failed`` with their message."""
    started = time.perf_counter()
    try:
        name, loaded = cached_model(settings, registry, params.get("model"))
        steps = params.get("steps") if params.get("sampler") == "ddim" else None
        sampler = make_sampler(params.get("sampler", "ddpm"), loaded.schedule, steps)
        total = len(sampler.timesteps)
        store.set_model(job_id, name, loaded.weights_sha256, total)
        is_points = tuple(loaded.sample_shape) == (2,)
        recorder = (
            ScatterRecorder(total, settings.gif_frames) if is_points else FrameRecorder(total, settings.gif_frames)
        )
        progress = _Progress(store, job_id, total, recorder, is_points, settings)
        n = int(params.get("n", 16))
        digit = params.get("digit")
        labels = [int(digit)] * n if digit is not None else None
        last_poll = [0.0, False]

        def should_stop() -> bool:
            now = time.perf_counter()
            if now - last_poll[0] >= 0.05:
                last_poll[0], last_poll[1] = now, store.cancel_requested(job_id)
            return bool(last_poll[1])

        samples = generate(
            loaded.model,
            sampler,
            sample_shape=loaded.sample_shape,
            num_samples=n,
            class_labels=labels,
            guidance_scale=float(params.get("guidance") or 0.0),
            seed=int(params.get("seed", 0)),
            callback=progress,
            should_stop=should_stop,
        )
        grid = scatter_image(samples) if is_points else make_grid(samples, scale=2)
        png = png_bytes(grid)
        gif = gif_bytes(recorder.frames)
    except GenerationCancelled as cancelled:
        store.cancelled(job_id, cancelled.step)
        logger.info("job %s cancelled after %d steps", job_id, cancelled.step)
        return "cancelled"
    except Exception as error:  # a job's failure must not take the worker down
        message = f"{type(error).__name__}: {error}"
        logger.exception("job %s failed", job_id)
        store.fail(job_id, message)
        return "failed"
    seconds = time.perf_counter() - started
    store.succeed(job_id, png, gif, seconds)
    logger.info("job %s succeeded in %.2f s (%d steps, n=%d)", job_id, seconds, total, n)
    return "succeeded"
