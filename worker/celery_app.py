"""The worker's Celery app (``celery -A worker.celery_app:app worker``): the contract's app with
the task module :mod:`worker.tasks` included. Importing it does not import torch."""

from __future__ import annotations

from contract.settings import get_settings
from contract.tasks import make_celery

app = make_celery(get_settings(), include=["worker.tasks"])
