"""The Celery application: Redis broker, JSON only, late acknowledgement, prefetch 1.

Importing this module does not import torch: the task module ``worker.tasks`` is listed in
``include`` and loaded only by a worker. The API sends tasks by name with :func:`send_generate`.
"""

from __future__ import annotations

from celery import Celery

from api.settings import Settings, get_settings

GENERATE_TASK = "ddpm.generate"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``."""
    app = Celery("ddpm", broker=settings.redis_url, include=["worker.tasks"])
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_time_limit=settings.max_job_s + 60,
        task_soft_time_limit=settings.max_job_s,
        broker_pool_limit=4,
    )
    return app


def send_generate(app: Celery, job_id: str, params: dict) -> None:
    """Queue a generation job by task name with JSON arguments only."""
    app.send_task(GENERATE_TASK, kwargs={"job_id": job_id, "params": params}, task_id=job_id)


app = make_celery(get_settings())
