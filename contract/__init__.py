"""The service contract: what the API and the workers agree on, and nothing else.

* :mod:`contract.settings`: the one pydantic-settings ``Settings`` (and the request limits);
* :mod:`contract.spec`: :class:`~contract.spec.JobSpec`, a job resolved once by the API and run
  exactly so by a worker;
* :mod:`contract.layout`: the Redis key layout, job statuses, the typed job record and events;
* :mod:`contract.transitions`: the job state transitions, each one Lua script;
* :mod:`contract.tasks`: the Celery task name, queue and configuration;
* :mod:`contract.registry`: the models on offer, read from checkpoint headers;
* :mod:`contract.metrics`: the Redis keys of the service's counters and histograms.

Torch-free: the API imports this package, and the API never imports torch.
"""
