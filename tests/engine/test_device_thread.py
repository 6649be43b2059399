"""worker.engine.device_thread: every engine of a device runs on ONE thread, in turns; one engine's
close or crash leaves the others running; the thread ends with its last engine."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.tiny_models import SCHEDULE, SHAPE, TINY, perturbed
from worker.engine import Engine, EngineClosed, EngineRequest
from worker.engine.device_thread import DeviceThread

WAIT = 120


@pytest.fixture(scope="module")
def model():
    return perturbed(TINY)


class ThreadRecorder:
    """A forward that records the thread and the engine of every call, in order."""

    def __init__(self, model, name: str, calls: list, fail: bool = False) -> None:
        self.model, self.name, self.calls, self.fail = model, name, calls, fail

    def __call__(self, x, t, labels):
        self.calls.append((self.name, threading.get_ident()))
        if self.fail:

            class Crash(BaseException):  # escapes the per-job handling: the engine itself crashes
                pass

            raise Crash("engine bug")
        return self.model(x, t, labels)


def test_two_engines_of_one_device_take_turns_on_one_thread(model) -> None:
    device_thread = DeviceThread("test-device")
    calls: list[tuple[str, int]] = []
    engines = [
        Engine(
            model,
            SCHEDULE,
            sample_shape=SHAPE,
            forward=ThreadRecorder(model, name, calls),
            name=name,
            start=False,
            device_thread=device_thread,
        )
        for name in ("a", "b")
    ]
    jobs = [engine.submit(EngineRequest(n=1, sampler="ddim", steps=20, seed=1, digit=1)) for engine in engines]
    for engine in engines:
        engine.start()
    results = [job.result(WAIT) for job in jobs]
    torch.testing.assert_close(results[0], results[1])  # the same model and request: the same samples
    assert len({ident for _, ident in calls}) == 1  # one thread drove both engines
    assert {name for name, _ in calls} == {"a", "b"} and len(calls) == 40
    order = [name for name, _ in calls]
    switches = sum(1 for first, second in zip(order, order[1:], strict=False) if first != second)
    assert switches >= 30  # round robin: a tick of each in turn, not one engine's job then the other's
    # work handed to an engine runs on the same thread
    thread_of_call = engines[1].call_on_engine_thread(threading.get_ident, timeout=WAIT)
    assert thread_of_call == calls[0][1]

    engines[0].close(timeout=WAIT)
    assert engines[0].wait_stopped(0) and device_thread.engines == 1
    assert engines[1].submit(EngineRequest(n=1, sampler="ddim", steps=5)).result(WAIT).shape == (1, *SHAPE)
    engines[1].close(timeout=WAIT)
    assert device_thread.engines == 0


def test_one_engines_crash_fails_its_jobs_only(model) -> None:
    device_thread = DeviceThread("test-device")
    calls: list[tuple[str, int]] = []
    broken = Engine(
        model,
        SCHEDULE,
        sample_shape=SHAPE,
        forward=ThreadRecorder(model, "broken", calls, fail=True),
        name="broken",
        device_thread=device_thread,
    )
    healthy = Engine(
        model,
        SCHEDULE,
        sample_shape=SHAPE,
        forward=ThreadRecorder(model, "healthy", calls),
        name="healthy",
        device_thread=device_thread,
    )
    lost = broken.submit(EngineRequest(n=1, sampler="ddim", steps=10))
    kept = healthy.submit(EngineRequest(n=1, sampler="ddim", steps=10))
    with pytest.raises(EngineClosed, match="crashed"):
        lost.result(WAIT)
    assert kept.result(WAIT).shape == (1, *SHAPE) and kept.status == "succeeded"
    assert broken.wait_stopped(WAIT)
    healthy.close(timeout=WAIT)
    # a fresh engine on the same device starts the thread again
    again = Engine(model, SCHEDULE, sample_shape=SHAPE, name="again", device_thread=device_thread)
    with again:
        assert again.submit(EngineRequest(n=1, sampler="ddim", steps=3)).result(WAIT).shape == (1, *SHAPE)


class TurnCounter:
    """An engine stand-in that records torch's thread count at each turn until told to stop."""

    name = "counter"

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.want = threading.Event()
        self.turned = threading.Event()
        self.done = False

    def wants_turn(self) -> bool:
        return self.done or self.want.is_set()

    def turn(self) -> bool:
        self.want.clear()
        self.seen.append(torch.get_num_threads())
        self.turned.set()
        return not self.done

    def step(self, device_thread: DeviceThread) -> int:
        self.turned.clear()
        self.want.set()
        device_thread.wake()
        assert self.turned.wait(WAIT)
        return self.seen[-1]


def test_lent_cores_narrow_the_team_until_they_are_given_back() -> None:
    """While a bucket's build computes beside it, the device thread's OpenMP team is one
    narrower (never under one), and as wide as configured again afterwards."""
    device_thread = DeviceThread("test-device", torch_threads=2)
    counter = TurnCounter()
    counter.want.set()
    device_thread.attach(counter)
    assert counter.turned.wait(WAIT) and counter.seen[-1] == 2
    device_thread.lend_cores(1)
    assert counter.step(device_thread) == 1
    device_thread.lend_cores(5)
    assert counter.step(device_thread) == 1
    device_thread.lend_cores(0)
    assert counter.step(device_thread) == 2
    counter.done = True
    device_thread.wake()
