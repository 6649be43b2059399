"""The worker's inference engine: step-level batching of generation jobs over one model.

One responsibility per module, as vLLM's v1 engine splits them:

- :mod:`worker.engine.request_state`: the request, its output plan and host data, each job's
  state and handle (no torch);
- :mod:`worker.engine.scheduler`: admission on plain integers (the row cap, FIFO with
  conservative backfilling; no torch);
- :mod:`worker.engine.executor`: a job's generation from its request, one tick's shared forward
  and vectorised step (torch);
- :mod:`worker.engine.outputs`: the tick's outputs to the host in one copy;
- :mod:`worker.engine.device_thread`: the one thread that drives every engine on a device;
- :mod:`worker.engine.stats`: the counters;
- :mod:`worker.engine.core`: the :class:`Engine` itself (schedule, execute, update, emit).

Names are imported lazily, so the torch-free modules (the scheduler, the request state, the
counters) import without torch.
"""

from __future__ import annotations

from ddpm_core.lazy import lazy_exports

_EXPORTS = {
    "Engine": "worker.engine.core",
    "EngineClosed": "worker.engine.request_state",
    "EngineJob": "worker.engine.request_state",
    "EngineRequest": "worker.engine.request_state",
    "HostResult": "worker.engine.request_state",
    "HostStep": "worker.engine.request_state",
    "JobStatus": "worker.engine.request_state",
    "JobTimeLimit": "worker.engine.request_state",
    "OutputPlan": "worker.engine.request_state",
    "EngineStats": "worker.engine.stats",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
