"""The worker's background duties: a heartbeat per running job, and in the worker's main
process a heartbeat of the worker itself (for ``/readyz`` and for others to see it alive) that
also re-queues jobs whose worker died."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from contract.settings import Settings
from contract.spec import JobSpec
from worker.store import JobStore

if TYPE_CHECKING:
    from worker.engine.stats import EngineStats

logger = logging.getLogger(__name__)


class _Settling(Exception):
    """Housekeeping skips judging jobs while heartbeats resume after a Redis outage."""


class JobHeartbeat(threading.Thread):
    """Touches a running job's heartbeat while it runs (a step or a model load may be long)."""

    def __init__(self, store: JobStore, job_id: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.job_id, self.interval = store, job_id, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.store.heartbeat(self.job_id)
            except Exception as error:  # Redis hiccup: the next beat may work
                logger.warning("heartbeat for job %s failed: %s", self.job_id, error)

    def stop(self) -> None:
        self._stop_event.set()


class WorkerHousekeeping(threading.Thread):
    """Announce the worker every few seconds; re-queue abandoned jobs with ``resend``."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        resend: Callable[[str, JobSpec], None],
        report: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        super().__init__(name="ddpm-housekeeping", daemon=True)
        self.worker = name
        self.settings = settings
        self.resend = resend
        self.report = report
        self.stopped = threading.Event()

    def run(self) -> None:
        store = JobStore(self.settings)
        interval = min(self.settings.heartbeat_s, self.settings.worker_dead_after_s / 3)
        # after Redis was unreachable, every heartbeat is old: judge no job abandoned until the
        # workers and their jobs have had time to beat again
        settle_s = 2 * max(self.settings.heartbeat_s, interval) + 1
        judge_after = 0.0
        while True:
            try:
                fields = self.report() if self.report is not None else {}
                if fields:  # before the name: a live worker is never seen without its queues
                    store.worker_stats(self.worker, fields)
                store.worker_alive(self.worker)
                if time.monotonic() < judge_after:
                    raise _Settling
                for record in store.requeue_abandoned():
                    logger.warning("job %s lost its worker %s; queueing it again", record.id, record.worker)
                    self.resend(record.id, record.spec)
                for record in store.resend_lost():
                    logger.warning("job %s is queued but the broker lost its message; sending it again", record.id)
                    self.resend(record.id, record.spec)
                store.prune_queue()
            except _Settling:
                pass
            except Exception as error:
                logger.warning("housekeeping failed: %s", error)
                judge_after = time.monotonic() + settle_s
            if self.stopped.wait(interval):
                break
        with contextlib.suppress(Exception):  # Redis may already be gone at shutdown
            store.worker_gone(self.worker)


def stats_fields(stats: EngineStats) -> dict[str, str]:
    """The engine's counters as a Redis hash (for benchmarks and metrics)."""
    fields = {name: str(value) for name, value in asdict(stats).items()}
    fields["mean_rows_per_tick"] = repr(stats.mean_rows_per_tick)
    fields["occupancy"] = repr(stats.occupancy)
    return fields
