"""Keep child processes running: restart one that dies, with exponential backoff, and give up on
one that keeps dying right after it starts (like supervisord's ``startretries`` or systemd's
``Restart=always`` with a start limit).

Each child runs in a session of its own, so a signal sent to one (or to the terminal's
foreground group, on Ctrl-C) does not reach the others; a child's leftovers (a process a child
started) are killed with its process group. On Linux every child is also given a signal by the
kernel when the supervisor dies (its *parent-death signal*): SIGKILL for the worker and the API,
which keep nothing that a restart needs (a job they held runs again at the next start), SIGTERM
for Redis, which then writes its append-only file and exits; so a ``ddpm serve`` killed by
SIGKILL leaves nothing running.

Stopping is concurrent: every child but the last (Redis, which the others write to until they
exit) is sent SIGTERM at once, each gets its own grace period, then the last one stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

Hurry = Callable[[], bool]


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a child that died, and when to give up on it.

    A child that dies within ``fast_exit_s`` of its start failed fast. After a child that ran
    longer dies, it is restarted after ``initial_delay_s``; each further fast failure in a row
    doubles the delay, up to ``max_delay_s``; the ``max_fast_failures``-th fast failure in a row
    is the last: the supervisor gives up on the child.
    """

    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0
    fast_exit_s: float = 10.0
    max_fast_failures: int = 5

    def delay(self, fast_failures: int) -> float:
        return min(self.initial_delay_s * 2**fast_failures, self.max_delay_s)


class Child(Protocol):
    """Something the supervisor starts, watches and stops."""

    name: str

    def start(self) -> None: ...  # raises on a failed start

    def poll(self) -> int | None: ...  # None while running, else the exit status

    @property
    def pid(self) -> int | None: ...

    def stop(self, hurry: Hurry) -> None: ...


def parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies (Linux only)."""
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "getppid"):
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: go at once
            os.kill(os.getpid(), sig)

    return preexec if os.uname().sysname == "Linux" else None


def signal_name(status: int) -> str:
    """``exit status 3`` or ``signal SIGKILL`` (Popen's negative status)."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
        return f"signal {-status}"
    return f"exit status {status}"


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (whatever is left of a child's session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop_process(
    process: subprocess.Popen,
    name: str,
    grace: float = 10.0,
    hurry: Hurry | None = None,
    terminated_at: float | None = None,
) -> None:
    """SIGTERM (and SIGCONT, so that a stopped process sees it), then after ``grace`` seconds, or
    as soon as ``hurry()`` says so, SIGKILL to its process group when it leads one.
    ``terminated_at``: the ``time.monotonic()`` at which SIGTERM was already sent."""
    if process.poll() is None:
        leads_group = _leads_group(process.pid)
        if terminated_at is None:
            logger.info("stopping the %s (pid %d)", name, process.pid)
            process.terminate()
            terminated_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if leads_group:
                    os.killpg(process.pid, signal.SIGCONT)
                else:
                    os.kill(process.pid, signal.SIGCONT)
        deadline = terminated_at + grace
        while process.poll() is None:
            if time.monotonic() >= deadline or (hurry is not None and hurry()):
                logger.warning("the %s did not stop in %.0f s; killing it", name, grace)
                if leads_group:
                    kill_group(process.pid)
                process.kill()
                process.wait()
                break
            time.sleep(0.05)
    # what the child left behind in its group (for example pool processes) goes too
    if _leads_group_id(process.pid):
        kill_group(process.pid)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _leads_group_id(pid: int) -> bool:
    """Whether a group with id ``pid`` still exists and is not ours."""
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return os.getpgrp() != pid


class ProcessChild:
    """A command run in a session of its own, stopped by SIGTERM with a grace period.

    Args:
        death_signal: what the kernel sends it when the supervisor dies.
        on_exit: called with the pid once the supervisor has seen the process die (for example
            to tell others at once that the jobs it held are free).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
        grace: float = 10.0,
        death_signal: signal.Signals = signal.SIGKILL,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.grace = grace
        self.preexec = parent_death_signal(death_signal)
        self.on_exit = on_exit
        self.process: subprocess.Popen | None = None
        self._terminated_at: float | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, start_new_session=True, preexec_fn=self.preexec)
        self._terminated_at = None

    def poll(self) -> int | None:
        if self.process is None:
            return -1
        status = self.process.poll()
        if status is not None:
            kill_group(self.process.pid)  # leftovers of a child that died
            if self.on_exit is not None:
                try:
                    self.on_exit(self.process.pid)
                except Exception as error:  # the restart matters more than the notice
                    logger.warning("after the %s exited: %s", self.name, error)
        return status

    def terminate(self) -> None:
        """Send SIGTERM (and SIGCONT, so that a stopped process sees it) without waiting."""
        if self.process is not None and self.process.poll() is None:
            logger.info("stopping the %s (pid %d)", self.name, self.process.pid)
            self.process.terminate()
            self._terminated_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, hurry: Hurry) -> None:
        if self.process is not None:
            stop_process(self.process, self.name, self.grace, hurry, terminated_at=self._terminated_at)


class _Watch:
    """The supervisor's record of one child."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.started_at = 0.0
        self.fast_failures = 0
        self.restart_at: float | None = None  # set while the child is down
        self.restarts = 0


class GaveUp(RuntimeError):
    """A child kept failing fast."""


class Supervisor:
    """Start children in order, restart them when they die, stop them in reverse order."""

    def __init__(self, children: Sequence[Child], policy: RestartPolicy | None = None, tick_s: float = 0.2) -> None:
        self.watches = [_Watch(child) for child in children]
        self.policy = policy or RestartPolicy()
        self.tick_s = tick_s

    def start(self) -> None:
        """Start every child, in order; a failure to start raises (nothing is left running)."""
        try:
            for watch in self.watches:
                watch.child.start()
                watch.started_at = time.monotonic()
                logger.info("started the %s (pid %s)", watch.child.name, watch.child.pid)
        except BaseException:
            self.stop(lambda: True)
            raise

    def run(self, stopping: Callable[[], bool], on_tick: Callable[[], None] | None = None) -> None:
        """Watch until ``stopping()``; raises :class:`GaveUp` when a child keeps dying fast."""
        while not stopping():
            for watch in self.watches:
                self._check(watch)
                if stopping():
                    return
            if on_tick is not None:
                on_tick()
            time.sleep(self.tick_s)

    def _check(self, watch: _Watch) -> None:
        now = time.monotonic()
        child = watch.child
        if watch.restart_at is None:
            status = child.poll()
            if status is None:
                return
            self._died(watch, now, f"exited with {signal_name(status)}")
        elif now >= watch.restart_at:
            watch.restarts += 1
            try:
                child.start()
            except Exception as error:
                logger.error("the %s did not start: %s", child.name, error)
                watch.started_at = now
                self._died(watch, time.monotonic(), "failed to start")
                return
            watch.started_at = time.monotonic()
            watch.restart_at = None
            logger.warning("restarted the %s (pid %s; restart %d)", child.name, child.pid, watch.restarts)

    def _died(self, watch: _Watch, now: float, how: str) -> None:
        policy = self.policy
        lived = now - watch.started_at
        name = watch.child.name
        if lived < policy.fast_exit_s:
            watch.fast_failures += 1
        else:
            watch.fast_failures = 0
        if watch.fast_failures >= policy.max_fast_failures:
            message = (
                f"giving up on the {name}: it {how} after {lived:.1f} s; it failed {watch.fast_failures} times "
                f"in a row, each within {policy.fast_exit_s:g} s of its start"
            )
            logger.error("%s", message)
            raise GaveUp(message)
        delay = policy.delay(watch.fast_failures)
        watch.restart_at = now + delay
        logger.warning("the %s %s after %.1f s; restarting it in %.1f s", name, how, lived, delay)

    def stop(self, hurry: Hurry) -> None:
        """Stop the children: all but the first at once (each with its own grace period), then
        the first (the one the others depend on, started first)."""
        first, *rest = self.watches
        for watch in rest:
            terminate = getattr(watch.child, "terminate", None)
            if terminate is not None:
                with contextlib.suppress(Exception):
                    terminate()
        for watch in reversed(rest):
            with contextlib.suppress(Exception):
                watch.child.stop(hurry)
        with contextlib.suppress(Exception):
            first.child.stop(hurry)
