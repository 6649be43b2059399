"""The Celery task and the worker's housekeeping: heartbeats and recovery of abandoned jobs.

A worker process keeps a heartbeat (for ``/readyz``) in a background thread of its main
process; the same thread re-queues running jobs whose worker stopped sending heartbeats, so a
job of a killed worker is run again by another (or a restarted) worker, with the same seed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any

from celery import signals

from api.registry import ModelRegistry
from api.settings import get_settings
from worker.celery_app import GENERATE_TASK, app, send_generate
from worker.jobs import JobStore

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {}


def _store() -> JobStore:
    if "store" not in _state or _state.get("pid") != os.getpid():
        _state.update(store=JobStore(get_settings()), registry=ModelRegistry(get_settings()), pid=os.getpid())
    return _state["store"]


def worker_name() -> str:
    return os.environ.get("DDPM_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate_task(self, job_id: str, params: dict[str, Any]) -> str:
    """Run one job: claim it (skipping cancelled, finished or live-elsewhere jobs), generate,
    store results. Job errors end the job ``failed``; they are never re-raised."""
    from worker.runner import run_job  # torch is imported in the pool process on first use

    store = _store()
    record = store.ensure(job_id, params)
    status = record.get("status")
    if status not in ("queued", "running"):
        logger.info("job %s is %s; skipping", job_id, status)
        return str(status)
    if store.attempts(job_id) >= get_settings().max_attempts:
        store.fail(job_id, f"gave up after {get_settings().max_attempts} attempts: its worker stopped each time")
        return "failed"
    if not store.start(job_id, worker_name()):
        logger.info("job %s is taken by a live worker; skipping", job_id)
        return "skipped"
    beat = _JobHeartbeat(store, job_id, get_settings().heartbeat_s)
    beat.start()
    try:
        return run_job(get_settings(), store, _state["registry"], job_id, params)
    finally:
        beat.stop()


class _JobHeartbeat(threading.Thread):
    """Touches the running job's heartbeat while it runs (a step or a model load may be long)."""

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


class _WorkerHousekeeping(threading.Thread):
    """In the worker's main process: announce the worker and recover stale jobs."""

    def __init__(self, name: str) -> None:
        super().__init__(name="ddpm-housekeeping", daemon=True)
        self.worker = name
        self.stopped = threading.Event()

    def run(self) -> None:
        settings = get_settings()
        store = JobStore(settings)
        while True:
            try:
                store.worker_alive(self.worker)
                for job_id in store.stale_running():
                    params = store.requeue(job_id)
                    if params is not None:
                        logger.warning("job %s lost its worker; queueing it again", job_id)
                        send_generate(app, job_id, params)
            except Exception as error:
                logger.warning("housekeeping failed: %s", error)
            if self.stopped.wait(min(settings.heartbeat_s, 5.0)):
                break
        with contextlib.suppress(Exception):  # Redis may already be gone at shutdown
            store.worker_gone(self.worker)


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    thread = _WorkerHousekeeping(worker_name())
    _state["housekeeping"] = thread
    thread.start()
    logger.info("worker %s ready", thread.worker)


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    thread = _state.get("housekeeping")
    if thread is not None:
        thread.stopped.set()
        thread.join(timeout=5)


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
