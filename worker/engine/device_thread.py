"""One thread per device drives every engine on it, a turn of each in round robin.

On a GPU, compiled forwards keep thread-local state: CUDA-graph trees record and replay on the
thread that made them, and dynamo reuses compiled graphs across instances of the same module
class. Two engines of one device on two threads (a second model, a hot-swapped file, an engine
rebuilt after eviction) could then drive each other's graphs from two threads at once. So every
engine of a device takes its turns on that device's one :class:`DeviceThread`: a turn runs the
engine's pending calls (warm-ups, compiles) and at most one tick, and the engines take turns in
order, so each model's jobs move one step per round whatever the others hold. On a CPU the same
holds for the OpenMP pool: one thread feeds it instead of several competing for its cores, and
while another process of the worker computes on the same cores (a bucket's build), the team is
made narrower (:meth:`DeviceThread.lend_cores`): a team as wide as the machine spins at its
barriers on a core it does not have, and ran a forward 3.6 times slower than when quiet.

The thread starts with the first engine attached and ends when the last one has stopped; it
sleeps while no engine has work. An engine's own errors end that engine only
(:meth:`EngineTurns.turn` handles them), never the thread or the other engines.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import torch

logger = logging.getLogger(__name__)


class EngineTurns(Protocol):
    """What the device thread asks of an engine (:class:`worker.engine.Engine`)."""

    name: str

    def wants_turn(self) -> bool:
        """Whether the engine has calls, jobs or a close to act on (cheap; any thread)."""

    def turn(self) -> bool:
        """Run pending calls and at most one tick; False once the engine has stopped for good."""


class DeviceThread:
    """The thread that drives every engine attached to it (one per device; see the module
    docstring). Thread-safe.

    Args:
        name: the thread's name, for logs (e.g. ``ddpm-device-cuda:0``).
        torch_threads: the CPU threads torch uses on this thread (the intra-op OpenMP team), set
            when it starts; None: torch's count as it stands. A worker gives them here and keeps
            every other thread at one (:func:`ddpm_core.device.keep_torch_to_this_thread`), so
            the process has one OpenMP team.
    """

    def __init__(self, name: str, torch_threads: int | None = None) -> None:
        self.name = name
        self.torch_threads = torch_threads
        self._wakeup = threading.Condition()
        self._engines: list[EngineTurns] = []
        self._thread: threading.Thread | None = None
        self._lent = 0  # cores another process computes on now (lend_cores)

    def attach(self, engine: EngineTurns) -> None:
        """Take ``engine`` into the rotation (starting the thread if it is not running)."""
        with self._wakeup:
            self._engines.append(engine)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._wakeup.notify()

    def wake(self) -> None:
        """An engine has something new to act on (any thread; never while holding an engine's lock)."""
        with self._wakeup:
            self._wakeup.notify()

    def is_current(self) -> bool:
        """Whether the caller runs on this device thread (e.g. inside an engine's callback)."""
        thread = self._thread
        return thread is not None and threading.current_thread() is thread

    def lend_cores(self, cores: int) -> None:
        """Run torch on ``cores`` fewer threads (never under one) from the next turn on, until
        lent back with ``lend_cores(0)``: for another process of this worker that computes on the
        same CPU meanwhile (any thread). Without ``torch_threads`` nothing changes."""
        with self._wakeup:
            self._lent = max(0, int(cores))
            self._wakeup.notify()

    def _threads_wanted(self) -> int | None:
        if self.torch_threads is None:
            return None
        with self._wakeup:
            return max(1, self.torch_threads - self._lent)

    @property
    def engines(self) -> int:
        """How many engines are attached."""
        with self._wakeup:
            return len(self._engines)

    def _run(self) -> None:
        threads = self._threads_wanted()
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while True:
                        if not self._engines:
                            self._thread = None  # a later attach starts a fresh thread
                            return
                        ready = [engine for engine in self._engines if engine.wants_turn()]
                        if ready:
                            break
                        self._wakeup.wait()
                wanted = self._threads_wanted()  # after the wait: a lend made meanwhile counts
                if wanted is not None and wanted != threads:
                    torch.set_num_threads(wanted)
                    logger.debug("%s: torch on %d threads", self.name, wanted)
                    threads = wanted
                for engine in ready:
                    if not engine.turn():
                        logger.debug("%s: engine %s stopped", self.name, engine.name)
                        with self._wakeup:
                            self._engines.remove(engine)
