"""The generation worker: a Celery app over Redis that runs job specs with torch.

``worker.celery_app``, ``worker.store`` and ``worker.housekeeping`` are torch-free; torch is
imported in the pool process, by ``worker.runner`` and ``worker.models``, on the first job.
"""
