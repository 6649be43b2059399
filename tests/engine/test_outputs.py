"""The engine's output side (worker.engine.outputs): every job's due outputs reach the host in ONE copy
per tick, as the same 8-bit pixels (or float32 points) the device held; and the device work of a
tick does not grow with the number of jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ddpm_core.batching as batching
from ddpm_core.models.mlp import MLPConfig, MLPDenoiser
from ddpm_core.render import uint8_pixels
from ddpm_core.schedule import NoiseSchedule
from tests.tiny_models import SCHEDULE, SHAPE, TINY, perturbed
from worker.engine import Engine, EngineRequest
from worker.engine.executor import StepExecutor
from worker.engine.outputs import OutputProcessor
from worker.engine.request_state import HostStep, OutputPlan

WAIT = 120


@pytest.fixture(scope="module")
def model():
    return perturbed(TINY)


def first_pixels(samples: torch.Tensor) -> torch.Tensor:
    """A reader: (n, 3) float32 per sample, cheap and checkable."""
    return samples.flatten(1)[:, :3] * 2


def test_one_copy_per_tick_carries_every_jobs_frames_previews_results_and_readings(model) -> None:
    requests = [
        EngineRequest(n=2, sampler="ddim", steps=6, guidance=1.0, seed=1, digit=0),
        EngineRequest(n=1, sampler="ddpm", steps=None, seed=2),  # all 50 steps
        EngineRequest(n=3, sampler="ddim", steps=9, guidance=0.0, seed=3, digit=2),
    ]
    seen: dict[int, list[HostStep]] = {i: [] for i in range(len(requests))}
    engine = Engine(model, SCHEDULE, sample_shape=SHAPE, start=False)
    jobs = []
    for i, request in enumerate(requests):
        total = request.steps or SCHEDULE.num_train_timesteps
        plan = OutputPlan(frozenset({1, 3, total}), frozenset(range(2, total + 1, 2)), first_pixels)
        jobs.append((engine.submit(request, outputs=plan, on_output=seen[i].append), plan, total))
    unplanned = engine.submit(EngineRequest(n=1, sampler="ddim", steps=5, seed=4))  # asks for nothing
    engine.start()
    try:
        for i, (job, plan, total) in enumerate(jobs):
            device_result = job.result(timeout=WAIT)
            host = job.host_result()
            assert host.samples.dtype == np.uint8 and host.samples.shape == (job.request.n, 8, 8, 1)
            np.testing.assert_array_equal(host.samples, uint8_pixels(device_result).numpy())
            np.testing.assert_allclose(host.readings, first_pixels(device_result).numpy(), rtol=0, atol=1e-6)
            steps = seen[i]
            assert [info.step for info in steps] == list(range(1, total + 1))  # every step, in order
            assert [s.step for s in steps if s.sample is not None] == sorted(plan.frame_steps)
            with_prediction = sorted(plan.frame_steps | {s for s in plan.preview_steps if s < total})
            assert [s.step for s in steps if s.pred_original_sample is not None] == with_prediction
            np.testing.assert_array_equal(steps[-1].sample, host.samples)  # the last frame is the result
        unplanned.result(timeout=WAIT)
        with pytest.raises(RuntimeError, match="without outputs"):
            unplanned.host_result()
        stats = engine.stats()
        # all jobs start in tick 1; something is due at steps 1, 2, 3, 4, 6, 8, 9 (the 9-step job's
        # end), and every even step up to 50: 28 of the 50 ticks, each with ONE copy for all jobs
        assert stats.ticks == 50
        assert stats.host_copies == 28
        assert stats.host_bytes > 0
    finally:
        engine.close()


def test_points_come_home_as_float32_and_a_failing_reader_fails_no_job() -> None:
    torch.manual_seed(0)
    mlp = MLPDenoiser(MLPConfig(hidden_dim=16, num_layers=2, time_embed_dim=8)).eval()
    schedule = NoiseSchedule.linear(20)

    def broken(samples: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the reader broke")

    with Engine(mlp, schedule, sample_shape=(2,)) as engine:
        good = engine.submit(EngineRequest(n=50, sampler="ddpm", seed=1), outputs=OutputPlan(reader=first_pixels))
        bad = engine.submit(EngineRequest(n=5, sampler="ddpm", seed=2), outputs=OutputPlan(reader=broken))
        points = good.result(timeout=WAIT)
        host = good.host_result()
        assert host.samples.dtype == np.float32 and host.samples.shape == (50, 2)
        np.testing.assert_array_equal(host.samples, points.numpy())  # bit for bit: the float32 bytes
        np.testing.assert_allclose(host.readings, first_pixels(points).numpy(), rtol=0, atol=1e-6)  # (50, 2)
        failed_reading = bad.host_result(timeout=WAIT)
        assert failed_reading.readings is None and "the reader broke" in failed_reading.reading_error
        assert failed_reading.samples.shape == (5, 2)


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched, except inside the host-side row planning."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.count += 1
        return func(*args, **(kwargs or {}))


def device_ops_of_one_tick(model, jobs: int, monkeypatch) -> tuple[int, int]:
    """(aten ops of one tick outside the host planning, device-to-host copies) for ``jobs`` jobs of
    mixed samplers, step counts and guidance, each with a preview due."""
    executor = StepExecutor(SCHEDULE, SHAPE, torch.device("cpu"), TINY.num_classes, max_batch=64)
    generations = [
        executor.prepare(
            EngineRequest(
                n=1,
                sampler=("ddpm", "ddim")[i % 2],
                steps=(None, 10, 25)[i % 3],
                guidance=(0.0, 1.0)[(i // 2) % 2],
                seed=i,
                digit=i % 3,
            )
        )
        for i in range(jobs)
    ]
    outputs = OutputProcessor(SHAPE, torch.device("cpu"))
    counter = OpCounter()
    original = batching.host_rows

    def host_rows_uncounted(*args, **kwargs):
        counter.paused = True
        try:
            return original(*args, **kwargs)
        finally:
            counter.paused = False

    monkeypatch.setattr(batching, "host_rows", host_rows_uncounted)
    plan = OutputPlan(preview_steps=frozenset(range(1, 1000)))
    with torch.inference_mode(), counter:
        tick = executor.step(generations, model)
        outputs.process([(plan, info, False) for info in tick.results])
    return counter.count, outputs.copies


def test_a_ticks_device_work_does_not_grow_with_the_number_of_jobs(model, monkeypatch) -> None:
    four, four_copies = device_ops_of_one_tick(model, 4, monkeypatch)
    sixteen, sixteen_copies = device_ops_of_one_tick(model, 16, monkeypatch)
    assert four == sixteen, (four, sixteen)
    assert four_copies == sixteen_copies == 1
