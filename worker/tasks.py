"""The Celery task: run one job's spec. Idempotent: a redelivered or duplicate task finds the
job claimed, finished or cancelled and does nothing; a job of a dead worker is claimed again.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import signals

from contract.registry import ModelRegistry
from contract.settings import get_settings
from contract.spec import JobSpec
from contract.tasks import GENERATE_TASK, send_generate
from worker.celery_app import app
from worker.housekeeping import JobHeartbeat, WorkerHousekeeping
from worker.store import JobStore

logger = logging.getLogger(__name__)

# The worker's name, fixed in the main process before the pool forks: the jobs a pool process
# claims carry the name the main process announces, so others can tell when it died.
WORKER_NAME = os.environ.get("DDPM_WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"

_state: dict[str, Any] = {}


def _process_state() -> tuple[JobStore, Any]:
    """This process's job store and model cache (made after the fork, on first use)."""
    if _state.get("pid") != os.getpid():
        from ddpm_core.device import pick_device
        from worker.models import ModelCache

        settings = get_settings()
        models = ModelCache(ModelRegistry(settings), pick_device(settings.device))
        _state.update(store=JobStore(settings), models=models, pid=os.getpid())
    return _state["store"], _state["models"]


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate_task(self, job_id: str, spec: dict[str, Any]) -> str:
    """Claim the job (skipping cancelled, finished or live-elsewhere jobs), run it, store results.
    Job errors end the job ``failed``; they are never re-raised."""
    from worker.runner import run_job  # torch is imported in the pool process on first use

    settings = get_settings()
    job_spec = JobSpec.model_validate(spec)
    store, models = _process_state()
    record = store.ensure(job_id, job_spec)
    if record.status.terminal:
        logger.info("job %s is %s; skipping", job_id, record.status.value)
        return record.status.value
    claim = store.claim(job_id, WORKER_NAME)
    if claim.out_of_attempts:
        store.fail(job_id, f"gave up after {settings.max_attempts} attempts: its worker stopped each time")
        return "failed"
    if not claim.claimed:
        logger.info("job %s is taken by a live worker; skipping", job_id)
        return "skipped"
    beat = JobHeartbeat(store, job_id, settings.heartbeat_s)
    beat.start()
    try:
        return run_job(settings, store, models, job_id, job_spec)
    finally:
        beat.stop()


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    thread = WorkerHousekeeping(WORKER_NAME, get_settings(), lambda job_id, spec: send_generate(app, job_id, spec))
    _state["housekeeping"] = thread
    thread.start()
    logger.info("worker %s ready", WORKER_NAME)


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
