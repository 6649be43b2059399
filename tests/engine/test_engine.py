"""worker.engine: step-level batching of jobs on a background thread, with a tiny U-Net.

The engine starts paused (``start=False``) where a test needs several jobs queued at once,
so what shares a forward does not depend on thread timing.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from ddpm_core import UNet, generate
from ddpm_core.compiled import BucketedForward
from ddpm_core.errors import GenerationCancelled
from ddpm_core.samplers import make_sampler
from tests.tiny_models import PIXEL_TOLERANCE, SCHEDULE, SHAPE, TINY, perturbed
from worker.engine import Engine, EngineClosed, EngineRequest, JobTimeLimit

WAIT = 120  # seconds; generous for a loaded 2-core machine


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="module")
def model() -> UNet:
    return perturbed(TINY)


class Recorder:
    """A forward that records every call's batch size and distinct timesteps."""

    def __init__(self, model: UNet, fail_at_call: int | None = None) -> None:
        self.model = model
        self.sizes: list[int] = []
        self.timesteps: list[set[int]] = []
        self.fail_at_call = fail_at_call

    def __call__(self, x, t, labels):
        self.sizes.append(x.shape[0])
        self.timesteps.append(set(t.tolist()))
        if self.fail_at_call is not None and len(self.sizes) == self.fail_at_call:
            raise RuntimeError("the forward broke")
        return self.model(x, t, labels)


def alone(model, request: EngineRequest) -> torch.Tensor:
    sampler = make_sampler(
        request.sampler, SCHEDULE, request.steps, **({"eta": request.eta} if request.sampler == "ddim" else {})
    )
    return generate(
        model,
        sampler,
        sample_shape=SHAPE,
        num_samples=request.n,
        class_labels=request.class_labels(),
        guidance_scale=request.guidance,
        seed=request.seed,
    )


def assert_close_in_pixels(batched: torch.Tensor, reference: torch.Tensor) -> None:
    assert batched.shape == reference.shape
    pixels = (batched - reference).abs() / 2
    assert pixels.mean().item() < PIXEL_TOLERANCE, pixels.mean().item()
    assert pixels.max().item() < 1 / 255


def make_engine(model, max_batch=16, fail_at_call=None, start=False) -> tuple[Engine, Recorder]:
    recorder = Recorder(model, fail_at_call)
    engine = Engine(model, SCHEDULE, sample_shape=SHAPE, forward=recorder, max_batch=max_batch, start=start)
    return engine, recorder


REQUESTS = [
    EngineRequest(n=2, sampler="ddpm", digit=1, guidance=1.5, seed=3),  # DDPM, all 50 steps
    EngineRequest(n=3, sampler="ddim", steps=10, digit=2, seed=5),  # no guidance
    EngineRequest(n=2, sampler="ddim", steps=7, eta=1.0, labels=(0, None), guidance=2.0, seed=9),
    EngineRequest(n=1, sampler="ddpm", steps=12, guidance=0.5, seed=11),  # unconditional: 1 row
    EngineRequest(n=1, sampler="ddim", steps=5, digit=0, seed=1),
]


def test_batched_equals_alone_for_mixed_samplers_steps_and_guidance(model):
    engine, recorder = make_engine(model)
    with engine:
        jobs = [engine.submit(request) for request in REQUESTS]
        assert [job.rows for job in jobs] == [4, 3, 4, 1, 1] and engine.queue_position(jobs[2]) == 2
        engine.start()
        results = [job.result(WAIT) for job in jobs]
    assert all(job.status == "succeeded" and job.step == job.total for job in jobs)
    assert {job.started_tick for job in jobs} == {0}  # all 13 rows fit one forward
    assert recorder.sizes[0] == 13 and max(len(t) for t in recorder.timesteps) >= 4  # mixed timesteps
    for request, result in zip(REQUESTS, results, strict=True):
        assert_close_in_pixels(result, alone(model, request))
    stats = engine.stats()
    assert stats.ticks == 50 and stats.succeeded == 5 and stats.forward_calls == 50
    assert stats.rows == sum(recorder.sizes) == 4 * 50 + 3 * 10 + 4 * 7 + 1 * 12 + 1 * 5
    assert stats.mean_rows_per_tick == pytest.approx(stats.rows / 50) and 0 < stats.occupancy < 1


def test_every_sampler_shares_ticks_and_each_equals_its_job_alone(model):
    """DDPM, DDIM and the multistep solvers (their history kept per job) in the same ticks; a
    multistep job cancelled mid-way ends cancelled and the others are unaffected."""
    requests = [
        EngineRequest(n=2, sampler="uni_pc", steps=8, digit=1, guidance=1.0, seed=21),
        EngineRequest(n=1, sampler="dpmpp_2m", steps=6, seed=22),
        EngineRequest(n=2, sampler="ddim", steps=9, labels=(2, None), guidance=0.5, seed=23),
        EngineRequest(n=1, sampler="ddpm", steps=10, digit=0, seed=24),
        EngineRequest(n=1, sampler="uni_pc", steps=12, digit=2, seed=25),  # cancelled at its step 4
    ]
    engine, recorder = make_engine(model)
    jobs = []

    def cancel_last(info):
        if info.step == 4:
            jobs[-1].cancel()

    with engine:
        jobs.extend(engine.submit(request) for request in requests[:-1])
        jobs.append(engine.submit(requests[-1], on_step=cancel_last))
        engine.start()
        results = [job.result(WAIT) for job in jobs[:-1]]
        assert isinstance(jobs[-1].exception(WAIT), GenerationCancelled)
    assert {job.started_tick for job in jobs} == {0} and recorder.sizes[0] == 4 + 1 + 4 + 1 + 1
    assert jobs[-1].status == "cancelled" and jobs[-1].step == 4
    for request, result in zip(requests, results, strict=False):
        assert_close_in_pixels(result, alone(model, request))


def test_a_job_joins_while_others_are_mid_way(model):
    engine, recorder = make_engine(model)
    first, late = REQUESTS[0], REQUESTS[2]
    joined = []

    def on_step(info):
        if info.step == 20:
            joined.append(engine.submit(late))

    with engine:
        job = engine.submit(first, on_step=on_step)
        engine.start()
        first_result = job.result(WAIT)
        late_result = joined[0].result(WAIT)
    assert joined[0].started_tick == 20 and recorder.sizes[19:22] == [4, 8, 8]
    assert_close_in_pixels(first_result, alone(model, first))
    assert_close_in_pixels(late_result, alone(model, late))


def test_cancelling_one_of_several_frees_its_rows(model):
    engine, recorder = make_engine(model)
    requests = [REQUESTS[0], EngineRequest(n=3, sampler="ddpm", digit=2, guidance=1.0, seed=7), REQUESTS[1]]
    cancelled_at = []
    jobs = []

    def on_step(info):
        if info.step == 3:
            cancelled_at.append(jobs[1].cancel())  # from the engine thread, between ticks

    with engine:
        jobs.append(engine.submit(requests[0], on_step=on_step))
        jobs.extend(engine.submit(request) for request in requests[1:])
        engine.start()
        with pytest.raises(GenerationCancelled) as cancelled:
            jobs[1].result(WAIT)
        others = [jobs[0].result(WAIT), jobs[2].result(WAIT)]
    assert cancelled_at == [True] and jobs[1].status == "cancelled"
    assert cancelled.value.step == 3 and cancelled.value.total == 50
    assert recorder.sizes[:4] == [4 + 6 + 3] * 3 + [4 + 3]  # its 6 rows leave after step 3
    assert not jobs[1].cancel()  # already over
    for request, result in zip([requests[0], requests[2]], others, strict=True):
        assert_close_in_pixels(result, alone(model, request))
    assert engine.stats().cancelled == 1


def test_cancelling_a_queued_job(model):
    engine, _ = make_engine(model, max_batch=4)
    with engine:
        running = engine.submit(EngineRequest(n=4, sampler="ddim", steps=5, seed=1))
        queued = engine.submit(EngineRequest(n=2, sampler="ddim", steps=5, seed=2))
        assert queued.cancel()
        engine.start()
        with pytest.raises(GenerationCancelled) as cancelled:
            queued.result(WAIT)
        running.result(WAIT)
    assert cancelled.value.step == 0 and queued.started_tick is None


def test_a_failing_callback_fails_only_its_job(model):
    engine, _ = make_engine(model)

    def explode(info):
        if info.step == 2:
            raise KeyError("the callback broke")

    seen = []
    with engine:
        jobs = [
            engine.submit(REQUESTS[0], on_step=lambda info: seen.append(info.step)),
            engine.submit(REQUESTS[1], on_step=explode),
            engine.submit(REQUESTS[4], on_start=lambda: 1 / 0),
        ]
        engine.start()
        with pytest.raises(KeyError, match="callback broke"):
            jobs[1].result(WAIT)
        with pytest.raises(ZeroDivisionError):
            jobs[2].result(WAIT)
        result = jobs[0].result(WAIT)
    assert jobs[1].status == "failed" and jobs[1].step == 2 and jobs[2].status == "failed"
    assert seen == list(range(1, 51))
    assert_close_in_pixels(result, alone(model, REQUESTS[0]))
    assert engine.stats().failed == 2


def test_a_failing_forward_fails_that_ticks_jobs_and_the_engine_goes_on(model):
    engine, _ = make_engine(model, fail_at_call=3)
    with engine:
        jobs = [engine.submit(REQUESTS[1]), engine.submit(REQUESTS[4])]
        engine.start()
        for job in jobs:
            with pytest.raises(RuntimeError, match="forward broke"):
                job.result(WAIT)
        later = engine.submit(REQUESTS[4])
        assert_close_in_pixels(later.result(WAIT), alone(model, REQUESTS[4]))
    assert [job.step for job in jobs] == [2, 2]


def test_the_batch_cap_holds_and_jobs_wait_their_turn(model):
    engine, recorder = make_engine(model, max_batch=6)
    requests = [
        EngineRequest(n=1 + i % 3, sampler="ddim", steps=4 + i, digit=i % 3, guidance=i % 2, seed=i) for i in range(10)
    ]
    with engine:
        jobs = [engine.submit(request) for request in requests]
        engine.start()
        results = [job.result(WAIT) for job in jobs]
    assert max(recorder.sizes) <= 6 and engine.stats().queued == 0
    assert any(job.started_tick > 0 for job in jobs)
    for request, result in zip(requests, results, strict=True):
        assert_close_in_pixels(result, alone(model, request))


def test_fifo_with_backfilling_never_delays_the_head(model):
    """A 4-row job waits behind a long 1-row job (cap 4); a stream of small jobs may fill the
    spare rows only when they end before the big job can start, so it starts exactly when the
    long job ends (a strict FIFO start), and the small jobs after it wait."""
    engine, recorder = make_engine(model, max_batch=4)
    long_job = EngineRequest(n=1, sampler="ddim", steps=12, seed=0)
    big = EngineRequest(n=2, sampler="ddim", steps=3, digit=1, guidance=1.0, seed=1)  # 4 rows
    short = EngineRequest(n=1, sampler="ddim", steps=4, seed=2)  # ends before the long job
    too_long = EngineRequest(n=1, sampler="ddim", steps=20, seed=3)  # would delay the big one
    stream = []

    def keep_submitting(info):
        if info.step % 2 == 0:  # a steady stream of small jobs behind the big one
            stream.append(engine.submit(short))

    with engine:
        first = engine.submit(long_job, on_step=keep_submitting)
        head = engine.submit(big)
        blocked = engine.submit(too_long)
        backfilled = engine.submit(short)
        engine.start()
        for job in (first, head, blocked, backfilled, *stream):
            job.result(WAIT)
        for job in stream:
            job.result(WAIT)
    assert backfilled.started_tick == 0  # overtook the head: it ends by tick 4 <= 12
    assert head.started_tick == 12  # exactly when the long job's row came free
    assert blocked.started_tick >= head.started_tick + head.total
    early = [job for job in stream if job.started_tick < head.started_tick]
    assert early and all(job.started_tick + job.total <= head.started_tick for job in early)
    assert max(recorder.sizes) <= 4


def test_an_oversized_job_runs_alone_in_chunks(model):
    engine, recorder = make_engine(model, max_batch=4)
    small = EngineRequest(n=1, sampler="ddim", steps=6, seed=4)
    big = EngineRequest(n=3, sampler="ddim", steps=5, digit=2, guidance=1.0, seed=5)  # 6 rows > 4
    longer = EngineRequest(n=1, sampler="ddim", steps=8, seed=6)
    with engine:
        first = engine.submit(small)
        oversized = engine.submit(big)
        backfilled = engine.submit(small)  # ends when the first does: no delay for the big job
        after = engine.submit(longer)  # would delay it: waits
        engine.start()
        jobs = (first, oversized, backfilled, after)
        results = [job.result(WAIT) for job in jobs]
    assert [job.started_tick for job in jobs] == [0, 6, 0, 11]
    assert recorder.sizes == [2] * 6 + [4, 2] * 5 + [1] * 8
    for request, result in zip([small, big, small, longer], results, strict=True):
        assert_close_in_pixels(result, alone(model, request))


def test_bad_requests_are_refused_at_submit(model):
    engine, _ = make_engine(model)
    with engine:
        for request, match in [
            (EngineRequest(n=0), "n must"),
            (EngineRequest(sampler="euler"), "unknown sampler"),
            (EngineRequest(sampler="ddim", steps=0), "num_inference_steps"),
            (EngineRequest(digit=3), "must be between 0 and 2"),
            (EngineRequest(n=2, labels=(1,)), "2 samples"),
            (EngineRequest(guidance=-1), "guidance"),
            (EngineRequest(eta=0.5), "eta"),
            (EngineRequest(digit=1, labels=(1,)), "not both"),
        ]:
            with pytest.raises(ValueError, match=match):
                engine.submit(request)
        assert engine.stats().submitted == 0


def test_close_stops_the_thread_and_ends_the_jobs_left(model):
    engine, _ = make_engine(model, max_batch=2, start=True)
    started = threading.Event()
    release = threading.Event()

    def hold(info):
        started.set()
        release.wait(WAIT)

    running = engine.submit(EngineRequest(n=2, sampler="ddpm", seed=0), on_step=hold)
    queued = engine.submit(EngineRequest(n=1, sampler="ddim", steps=5))
    assert started.wait(WAIT)
    closer = threading.Thread(target=engine.close)
    closer.start()
    release.set()
    closer.join(WAIT)
    assert engine.wait_stopped(0)
    for job in (running, queued):
        with pytest.raises(EngineClosed):
            job.result(WAIT)
    with pytest.raises(EngineClosed):
        engine.submit(EngineRequest())

    draining, _ = make_engine(model, start=True)
    jobs = [draining.submit(REQUESTS[4]), draining.submit(REQUESTS[3])]
    draining.close(drain=True, timeout=WAIT)
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]


def test_engine_over_a_bucketed_forward_with_warmup(model):
    forward = BucketedForward(model, max_batch=8, buckets=(2, 8))
    engine = Engine(model, SCHEDULE, sample_shape=SHAPE, forward=forward)
    with engine:
        assert engine.max_batch == 8
        assert set(engine.warmup(timeout=WAIT)) == {2, 8}
        assert (engine.stats().buckets_compiled, engine.stats().buckets_total) == (0, 2)  # eager: not compiled
        for bucket in forward.buckets:  # what the background compiler does: each bucket swapped in
            forward.install(bucket, model)
        assert engine.stats().buckets_compiled == 2
        jobs = [engine.submit(request) for request in REQUESTS[1:]]
        results = [job.result(WAIT) for job in jobs]
    for request, result in zip(REQUESTS[1:], results, strict=True):
        assert_close_in_pixels(result, alone(model, request))
    assert engine.stats().padded_rows == forward.padded_rows > 0
    done = []
    jobs[0].add_done_callback(done.append)
    assert done == [jobs[0]]


def test_an_engine_crash_fails_every_job_instead_of_hanging(model):
    class Crash(BaseException):  # not an Exception: escapes the per-job handling
        pass

    def crash(x, t, labels):
        raise Crash("engine bug")

    engine = Engine(model, SCHEDULE, sample_shape=SHAPE, forward=crash, start=False)
    jobs = [engine.submit(request) for request in REQUESTS[:2]]
    engine.start()
    for job in jobs:
        with pytest.raises(EngineClosed, match="crashed"):
            job.result(WAIT)
    with pytest.raises(EngineClosed):
        engine.submit(REQUESTS[0])
    engine.close(timeout=WAIT)


def test_close_from_a_callback(model):
    engine, _ = make_engine(model, start=True)
    job = engine.submit(REQUESTS[4], on_step=lambda info: engine.close())
    with pytest.raises(EngineClosed):
        job.result(WAIT)
    assert engine.wait_stopped(WAIT) and job.step == 1


def test_a_job_past_its_time_limit_is_stopped_and_fails_while_the_others_go_on(model):
    class Slow(Recorder):
        def __call__(self, x, t, labels):
            time.sleep(0.02)
            return super().__call__(x, t, labels)

    engine = Engine(model, SCHEDULE, sample_shape=SHAPE, forward=Slow(model), max_batch=16)
    with engine:
        limited = engine.submit(EngineRequest(n=1, sampler="ddpm", digit=1, seed=2, time_limit_s=0.3))  # 50 steps
        free = engine.submit(EngineRequest(n=1, sampler="ddpm", digit=2, seed=3))
        with pytest.raises(JobTimeLimit, match=r"time limit of 0.3 s; stopped after \d+ of 50 steps"):
            limited.result(WAIT)
        assert limited.status == "failed" and 0 < limited.step < 50
        assert free.result(WAIT).shape == (1, *SHAPE) and free.status == "succeeded"
        with pytest.raises(ValueError, match="time_limit_s"):
            engine.submit(EngineRequest(time_limit_s=0))
