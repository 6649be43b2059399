"""The worker's Celery app (``celery -A worker.celery_app:app worker``): the contract's app with
the task module :mod:`worker.tasks` included. Importing it does not import torch.

A worker process holds up to ``DDPM_JOBS_IN_FLIGHT`` jobs at once: its pool is Celery's
thread pool of that many threads, each task hands its spec to the process's engine and waits
for it, so one batched forward serves every job in flight. No process forks after torch (and
CUDA) are loaded.

Run as root, Celery warns in nine lines at every start (its ``SecurityWarning``, raised for
pickle; this app accepts JSON only): the worker filters that warning out with Python's warnings
filter and says what running as root means in one line (:func:`worker.tasks.root_note`).
"""

from __future__ import annotations

import warnings

from celery.exceptions import SecurityWarning

from contract.settings import get_settings
from contract.tasks import make_celery

settings = get_settings()
app = make_celery(settings, include=["worker.tasks"])
app.conf.update(worker_pool="threads", worker_concurrency=settings.jobs_in_flight)

# Celery's check_privileges() runs when the worker starts, after this module is imported
warnings.filterwarnings("ignore", message="You're running the worker with superuser", category=SecurityWarning)
