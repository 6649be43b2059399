"""The Celery task: run one job's spec. Idempotent: a redelivered or duplicate task finds the
job claimed, finished or cancelled and does nothing; a job of a dead worker is claimed again.

Every task runs on one of the worker's threads and hands its spec to the process's engine
(:mod:`worker.engines`). The worker loads the default model (and runs it once) before it
announces itself, so ``/readyz`` is ready once jobs can run; the forward's buckets compile in the
background after that (:mod:`worker.compiler`), and the worker's stats say how many are done.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from typing import Any

from celery import signals

from contract.layout import QUEUES_FIELD, ROW_SECONDS_FIELD, encode_queues, encode_row_seconds, worker_name
from contract.registry import ModelRegistry
from contract.settings import get_settings
from contract.spec import JobSpec
from contract.tasks import GENERATE_TASK, send_generate
from worker.celery_app import app
from worker.housekeeping import JobHeartbeat, WorkerHousekeeping
from worker.store import JobStore

logger = logging.getLogger(__name__)

WORKER_NAME = os.environ.get("DDPM_WORKER_NAME") or worker_name(os.getpid())

_state: dict[str, Any] = {}
_state_lock = threading.Lock()


def _process_state() -> tuple[JobStore, Any]:
    """This process's job store and engine pool (made on first use)."""
    with _state_lock:
        if "engines" not in _state:
            from ddpm_core.device import pick_device
            from worker.check import DigitChecker
            from worker.compiler import BucketCompiler, strategy_for
            from worker.engines import EnginePool
            from worker.models import ModelCache
            from worker.progress import JobWatch

            settings = get_settings()
            device = pick_device(settings.device)
            logger.info("worker %s runs on %s (torch %s)", WORKER_NAME, device, _torch_version())
            compiler = None
            if settings.compile:
                compiler = BucketCompiler(settings.compile_cache_path, strategy_for(device.type))
                compiler.start()
            models = ModelCache(ModelRegistry(settings), device)
            store = JobStore(settings)
            _state.update(
                device=device,
                store=store,
                # one thread publishes every job's progress and reads every job's cancel flag
                watch=JobWatch(store, min(0.1, max(settings.progress_interval_s, 0.02))),
                engines=EnginePool(models, settings, compiler, _state.get("torch_threads")),
                # the per-digit check's classifier: loaded once, by the first job it can check
                checker=DigitChecker(settings.classifier_path, device),
            )
        return _state["store"], _state["engines"]


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate_task(self, job_id: str, spec: dict[str, Any]) -> str:
    """Claim the job (skipping cancelled, finished or live-elsewhere jobs), run it, store results.
    Job errors end the job ``failed``; they are never re-raised."""
    from ddpm_core.device import keep_torch_to_this_thread
    from worker.runner import run_job

    settings = get_settings()
    job_spec = JobSpec.model_validate(spec)
    keep_torch_to_this_thread()  # a first job loads its model here: no OpenMP team of this thread's
    store, engines = _process_state()
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
        return run_job(settings, store, engines, job_id, job_spec, _state["watch"], checker=_state["checker"])
    finally:
        beat.stop()


def _torch_version() -> str:
    import torch

    return torch.__version__


def _report() -> dict[str, str]:
    """The worker's stats for its heartbeat: device, engine counters, compile progress."""
    from worker.housekeeping import stats_fields

    fields = {"device": str(_state["device"])} if "device" in _state else {}
    fields[QUEUES_FIELD] = encode_queues(_state.get("queues", []))  # /readyz: who consumes the API's queue
    engines = _state.get("engines")
    if engines is not None:
        stats = engines.stats()
        if stats is not None:
            fields.update(stats_fields(stats))
        fields[ROW_SECONDS_FIELD] = encode_row_seconds(engines.row_seconds())
        if engines.compiler is not None:
            fields["compile"] = engines.compiler.strategy
            fields["compile_errors"] = "; ".join(engines.compiler.errors())
        else:
            fields["compile"] = "off"
    return fields


def _warm_default_model() -> None:
    """Load the default model and run it once (its buckets then compile in the background)."""
    settings = get_settings()
    store, engines = _process_state()
    try:
        info = ModelRegistry(settings).get(None)
    except LookupError as error:
        logger.warning("no default model to warm: %s", error)
        return
    spec = JobSpec(
        model=info.name,
        weights_sha256=info.weights_sha256,
        sampler="ddim",
        steps=1,
        guidance=0.0,
        seed=0,
        n=1,
        digit=None,
    )
    try:
        engines.for_spec(spec)
    except Exception as error:  # a broken default model must not keep the worker from serving others
        logger.error("could not load the default model %s: %s", info.name, error)


def _exit_now() -> None:
    """The last exit handler: skip the interpreter's teardown (about a second with torch loaded;
    everything that matters was closed at the worker's shutdown), so a stopped worker is gone
    at once."""
    _exit_now_with(int(_state.get("exitcode") or 0))


def _exit_now_with(status: int) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def root_note() -> str | None:
    """One line on what running the worker as root means (None when it does not run as root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    return (
        "the worker runs as root: its tasks take JSON only (no message can run code), but any flaw in it, "
        "a model file or a dependency would act with root's rights; prefer an unprivileged user "
        "(the Docker images run as 'app')"
    )


@signals.worker_init.connect
def _on_worker_init(**_: Any) -> None:
    atexit.register(_exit_now)  # registered first, so it runs after every other exit handler
    settings = get_settings()
    # inductor's cache (in-process compiles) beside the compiled packages, kept across restarts
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(settings.compile_cache_path / "inductor"))
    from ddpm_core.device import pick_device

    try:
        pick_device(settings.device)
    except ValueError as error:  # e.g. DDPM_DEVICE=cuda without a GPU: never a silent CPU fallback
        logger.critical("the worker cannot start: DDPM_DEVICE=%s: %s", settings.device, error)
        _exit_now_with(3)
    import torch

    from ddpm_core.device import keep_torch_to_this_thread

    # one OpenMP team in the process, the device thread's: it gets the CPU threads, every other
    # thread that touches torch runs its operations alone (see keep_torch_to_this_thread)
    _state["torch_threads"] = settings.torch_threads or torch.get_num_threads()
    keep_torch_to_this_thread()


@signals.celeryd_after_setup.connect
def _on_worker_setup(**_: Any) -> None:
    note = root_note()  # once logging is set up
    if note is not None:
        logger.warning(note)  # instead of Celery's nine-line warning (filtered in worker.celery_app)


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    _warm_default_model()  # before the worker announces itself: /readyz waits for the model
    _state["queues"] = list(app.amqp.queues.consume_from)  # --queues, else the configured queue
    thread = WorkerHousekeeping(
        WORKER_NAME,
        get_settings(),
        resend=lambda job_id, spec: send_generate(app, job_id, spec),
        report=_report,
    )
    _state["housekeeping"] = thread
    thread.start()
    logger.info(
        "worker %s ready on queue %s: up to %d jobs in flight",
        WORKER_NAME,
        encode_queues(_state["queues"]),
        get_settings().jobs_in_flight,
    )


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    _state["exitcode"] = getattr(sender, "exitcode", 0)
    thread = _state.get("housekeeping")
    if thread is not None:
        thread.stopped.set()
        thread.join(timeout=5)
    engines = _state.get("engines")
    if engines is not None:
        engines.close()
