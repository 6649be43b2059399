"""The worker's engine pool: no lock is held across slow work (a model's load never holds up
another model's job or a stats read), and a model whose first forward raises is closed cleanly,
remembered, and retried only after its backoff."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import worker.engines as engines_module
from contract.registry import ModelRegistry
from contract.settings import Settings
from tests.service.conftest import REPO, make_tiny_checkpoint
from tests.worker.test_models import spec_for
from worker.engine import Engine, EngineRequest
from worker.engines import EnginePool, ModelUnavailable
from worker.models import ModelCache


def pool_for(model_dir: Path) -> EnginePool:
    settings = Settings(model_dir=model_dir, compile=False, max_batch=8)
    return EnginePool(ModelCache(ModelRegistry(settings), torch.device("cpu")), settings)


def engine_threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith("engine-")}


def test_a_model_whose_first_forward_raises_is_closed_remembered_and_retried_after_its_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_for(make_tiny_checkpoint(tmp_path / "mnist.safetensors"))
    pool = pool_for(tmp_path)
    before = engine_threads()
    calls = []

    def broken(self: Engine, timeout: float | None = None) -> float:
        calls.append(self.name)
        raise RuntimeError("the model's first forward failed")

    monkeypatch.setattr(Engine, "warmup_eager", broken)
    monkeypatch.setattr(engines_module, "FIRST_BACKOFF_S", 0.5)
    with pytest.raises(RuntimeError, match="first forward failed"):
        pool.for_spec(spec)
    assert engine_threads() == before  # its engine was closed: no thread left behind
    assert pool.stats() is None
    with pytest.raises(ModelUnavailable, match="first forward failed"):  # remembered, not loaded again
        pool.for_spec(spec)
    assert len(calls) == 1
    time.sleep(0.6)
    with pytest.raises(RuntimeError, match="first forward failed"):  # the backoff passed: tried again
        pool.for_spec(spec)
    assert len(calls) == 2
    with pytest.raises(ModelUnavailable, match=r"next try in 1 s"):  # the backoff doubled
        pool.for_spec(spec)
    monkeypatch.undo()
    time.sleep(1.1)
    _, engine = pool.for_spec(spec)  # mended: served again
    assert engine.submit(EngineRequest(n=1, sampler="ddim", steps=10, digit=1)).result(60).shape == (1, 1, 28, 28)
    pool.close()
    assert engine_threads() == before


def test_a_slow_load_holds_up_neither_another_model_nor_a_stats_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_spec = spec_for(make_tiny_checkpoint(tmp_path / "slow.safetensors", num_train_timesteps=100))
    fast_spec = spec_for(make_tiny_checkpoint(tmp_path / "fast.safetensors"))
    pool = pool_for(tmp_path)
    loading, release = threading.Event(), threading.Event()
    real = ModelCache.for_spec

    def for_spec(self: ModelCache, spec):
        if spec.model == "slow":
            loading.set()
            assert release.wait(60)
        return real(self, spec)

    monkeypatch.setattr(ModelCache, "for_spec", for_spec)
    results: dict[str, object] = {}
    slow = threading.Thread(target=lambda: results.update(slow=pool.for_spec(slow_spec)))
    waiter = threading.Thread(target=lambda: results.update(waiter=pool.for_spec(slow_spec)))
    slow.start()
    assert loading.wait(30)
    waiter.start()  # a second job for the loading model waits for the same load
    started = time.monotonic()
    assert pool.stats() is None  # no engine yet, and no wait
    _, engine = pool.for_spec(fast_spec)
    assert engine.submit(EngineRequest(n=1, sampler="ddim", steps=10, digit=1)).result(60) is not None
    assert pool.stats().succeeded == 1
    assert time.monotonic() - started < 30 and slow.is_alive() and waiter.is_alive()
    release.set()
    slow.join(60)
    waiter.join(60)
    assert results["slow"][1] is results["waiter"][1]  # one engine for both
    pool.close()


def test_a_sticky_device_error_ends_the_worker_process_and_an_oom_does_not(tmp_path: Path) -> None:
    """A CUDA error other than out-of-memory fails every later kernel: the engine fails the tick's
    jobs and the worker process ends (status 70) so that it is restarted, instead of failing every
    job it takes while it keeps reporting alive. Injected as the errors torch raises."""
    script = tmp_path / "engine.py"
    script.write_text(
        "import sys, torch\n"
        "from tests.tiny_models import SCHEDULE, SHAPE, TINY, perturbed\n"
        "from worker.engine import Engine, EngineRequest\n"
        "from worker.engines import exit_for_device_error\n"
        "model = perturbed(TINY)\n"
        "error = {'oom': torch.OutOfMemoryError('CUDA out of memory'),\n"
        "         'sticky': RuntimeError('CUDA error: an illegal memory access was encountered')}[sys.argv[1]]\n"
        "def forward(x, t, y):\n"
        "    raise error\n"
        "engine = Engine(model, SCHEDULE, sample_shape=SHAPE, forward=forward, on_fatal=exit_for_device_error)\n"
        "job = engine.submit(EngineRequest(n=1, sampler='ddim', steps=5, digit=1))\n"
        "assert job.exception(60) is error\n"
        "engine.close(timeout=10)\n"
        "print('still running')\n"
    )
    for kind, status, printed in (("oom", 0, True), ("sticky", 70, False)):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            [sys.executable, str(script), kind], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == status, (kind, result.stderr[-2000:])
        assert ("still running" in result.stdout) == printed, kind
    assert "the device is unusable" in result.stderr
