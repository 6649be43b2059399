"""What a job shows while it runs, for every job of a worker process from one thread.

The engine's device thread leaves each step of a job in its :class:`JobChannel` (host data, no
torch). One :class:`JobWatch` thread per worker process then, every interval, turns what every
job in flight left into GIF frames, progress events and previews (:class:`JobReporter`:
throttled to the newest per interval) and reads every job's cancel flag: one Redis round trip
for all of them (:class:`~worker.store.JobBatch`). The jobs' own task threads only wait for
their engine results, so sixteen jobs in flight are one thread waking ten times a second, not
sixteen threads polling Redis and encoding previews beside the device thread.

A Redis outage drops progress events (logged), never a job.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis.exceptions

from contract.settings import Settings
from ddpm_core.render import FrameRecorder, ScatterRecorder, bounded_png, make_grid, png_bytes, scatter_image
from worker.engine.request_state import HostStep, OutputPlan, Reader
from worker.store import JobBatch, JobStore

logger = logging.getLogger(__name__)
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# px, the longer side of each grid in a GIF frame: 64 MNIST digits (242) and 16 images of 64 x 64 (266) stay whole
GIF_GRID_SIDE = 272
PREVIEW_SIDE = 256  # px, the longer side of a preview (shrunk further while its PNG is too large)
PREVIEW_MAX_BYTES = 64 * 1024  # of a preview's PNG, before base64
SCATTER_PREVIEW_SIDE = 128  # px, a point model's preview


class JobChannel:
    """What the engine thread leaves for the job: each step as host data, turned into GIF frames
    and preview updates off the device thread (:meth:`take`), so the device thread only queues."""

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
        """On the device thread, after each step: queue it."""
        self._steps.put(info)

    def take(self, timeout: float) -> list[tuple[int, np.ndarray | None]]:
        """The steps since the last call (waiting up to ``timeout`` s for the first), their frames
        kept; (step, preview or None) for each."""
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
    """Throttled progress events and previews of one job, queued on a :class:`JobBatch` (or
    anything with its ``progress`` and ``event`` methods)."""

    def __init__(self, job_id: str, channel: JobChannel, settings: Settings) -> None:
        self.job_id, self.channel = job_id, channel
        self.interval = settings.progress_interval_s
        self.started = time.perf_counter()
        self.last_sent = 0.0
        self.last_preview: float | None = None

    def publish(self, updates: list[tuple[int, np.ndarray | None]], sink: JobBatch) -> None:
        """Queue the progress of ``updates`` and their previews, throttled: at most one of each
        per interval, the newest (a preview that waited is dropped for the newer one, so fast
        jobs do not spend their time encoding images nobody sees); with an interval of 0, every
        step and every preview. The first and the last step's progress always go out."""
        if not updates:
            return
        total = self.channel.total
        now = time.perf_counter()
        every = self.interval == 0
        previews = [(step, preview) for step, preview in updates if preview is not None]
        if not every:
            due = self.last_preview is None or now - self.last_preview >= self.interval
            previews = previews[-1:] if due else []
        for step, preview in previews:
            sink.event(self.job_id, "preview", {"step": step, "total": total, "image": self._png(preview)})
            self.last_preview = now
        for step in [step for step, _ in updates] if every else [updates[-1][0]]:
            if every or step == total or step == 1 or now - self.last_sent >= self.interval:
                elapsed = now - self.started
                sink.progress(self.job_id, step, total, elapsed / step * (total - step), elapsed)
                self.last_sent = now

    def _png(self, sample: np.ndarray) -> str:
        return "data:image/png;base64," + base64.b64encode(preview_png(sample, self.channel.is_points)).decode("ascii")


def preview_png(sample: np.ndarray, is_points: bool) -> bytes:
    """A preview's PNG: a scatter of points (n, 2), or a grid of 8-bit images (n, H, W, C) of at most
    :data:`PREVIEW_SIDE` pixels and :data:`PREVIEW_MAX_BYTES` bytes."""
    if is_points:
        return png_bytes(scatter_image(sample, SCATTER_PREVIEW_SIDE))
    return bounded_png(make_grid(sample), PREVIEW_MAX_BYTES, PREVIEW_SIDE)


@dataclass
class _Watched:
    reporter: JobReporter | None
    cancel: Callable[[], object]


class JobWatch:
    """Every job in flight in this process, served by one thread (started with the first job).

    Every ``interval`` seconds it publishes what each job's channel holds and reads each job's
    cancel flag, in one Redis round trip, and cancels the jobs whose flag is set (their engine
    handles stop before the next tick). A job is watched from its submission (:meth:`watch`;
    again with its redraws' handles) until :meth:`finish`, which publishes what is left on the
    caller's thread, so a job's last progress precedes its end.
    """

    def __init__(self, store: JobStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._jobs: dict[str, _Watched] = {}
        self._lock = threading.Lock()  # held while a round runs: finish() never races it
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def watch(self, job_id: str, cancel: Callable[[], object], reporter: JobReporter | None = None) -> None:
        """Watch ``job_id``: ``cancel()`` stops its current engine handle; ``reporter`` (None: keep
        the one it has) publishes its progress."""
        with self._lock:
            known = self._jobs.get(job_id)
            if reporter is None and known is not None:
                reporter = known.reporter
            self._jobs[job_id] = _Watched(reporter, cancel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ddpm-job-watch", daemon=True)
                self._thread.start()

    def finish(self, job_id: str) -> None:
        """Stop watching ``job_id`` after publishing what its channel still holds."""
        with self._lock:
            watched = self._jobs.pop(job_id, None)
            if watched is not None and watched.reporter is not None:
                batch = self.store.batch()
                watched.reporter.publish(watched.reporter.channel.take(timeout=0), batch)
                self._send(batch, [job_id])

    def close(self) -> None:
        self._stopped.set()

    def round(self) -> None:
        """One round: every job's progress and previews, every job's cancel flag, one round trip."""
        with self._lock:
            jobs = list(self._jobs.items())
            batch = self.store.batch()
            for job_id, watched in jobs:
                if watched.reporter is not None:
                    watched.reporter.publish(watched.reporter.channel.take(timeout=0), batch)
                batch.read_cancel(job_id)
            flags = self._send(batch, [job_id for job_id, _ in jobs])
        for (job_id, watched), flagged in zip(jobs, flags, strict=False):
            if flagged:
                logger.info("job %s: cancellation asked for", job_id)
                watched.cancel()

    def _send(self, batch: JobBatch, job_ids: list[str]) -> list[bool]:
        try:
            return batch.execute()
        except REDIS_ERRORS as error:
            logger.warning("progress of %d job(s) not sent (Redis: %s)", len(job_ids), error)
            return []

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.round()
            except Exception:  # a bug here must not stop progress for good
                logger.exception("job watch round failed")
