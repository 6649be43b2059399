"""The Celery side of the contract: the task's name and arguments, its queue and the app's
configuration (Redis broker through :mod:`contract.broker`, JSON only, late acknowledgement,
prefetch 1). Job time limits are the engine's (``DDPM_MAX_JOB_S``), not Celery's: its thread
pool cannot enforce them.

The API builds a sending-only app (no task module); a worker builds the same app with its task
module included. Neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from contract.broker import TRANSPORT
from contract.settings import Settings
from contract.spec import JobSpec

GENERATE_TASK = "ddpm.generate"


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """A Celery app configured from ``settings``; ``include`` names task modules to load."""
    app = Celery("ddpm", broker=settings.redis_url, include=list(include))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.queue_name,
        task_routes={GENERATE_TASK: {"queue": settings.queue_name}},
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # ride out a Redis restart, however long
        # the redelivery story is in contract.broker: the job store re-queues the jobs of dead
        # workers; the broker's visibility timeout outlasts the longest job, so it never delivers
        # a live job twice and only sweeps up stranded messages (a sweep lock left by a killed
        # worker expires in 30 s)
        broker_transport=TRANSPORT,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 30,
        },
        broker_pool_limit=4,
    )
    return app


def generate_kwargs(job_id: str, spec: JobSpec) -> dict[str, Any]:
    """The task's keyword arguments: JSON only."""
    return {"job_id": job_id, "spec": spec.model_dump(mode="json")}


def send_generate(app: Celery, job_id: str, spec: JobSpec) -> None:
    """Queue a job by task name; the Celery task id is the job id."""
    app.send_task(GENERATE_TASK, kwargs=generate_kwargs(job_id, spec), task_id=job_id)
