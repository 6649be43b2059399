"""The generation worker (Celery over Redis) and ``ddpm serve``.

``worker.celery_app`` and ``worker.jobs`` are torch-free, so the API can send tasks; only
``worker.tasks`` and ``worker.runner`` (imported by the worker process itself) use torch.
"""
