"""The engine's scheduler: which jobs take the rows of the next forward. Plain integers, no torch.

A job is ``(id, rows, total_steps, steps_done, deadline)``: the rows it takes of every forward
(unconditional copies included), its step count, the steps it has done and the time (any clock,
the caller's ``now``) past which it is dropped. One forward is a *tick*; a running job does one
step per tick, so a job with ``r`` steps left ends in ``r`` ticks.

Before each tick, :meth:`Scheduler.schedule` drops the jobs cancelled (:meth:`Scheduler.cancel`)
or past their deadline, then admits queued jobs. ``max_batch`` bounds the rows of the running
jobs; a job whose rows alone exceed ``max_batch`` is admitted *alone* when it reaches the head of
the queue and nothing else runs (its forward then runs in chunks).

Admission policy: FIFO with conservative backfilling (EASY backfilling from batch schedulers,
exact here because every job's remaining steps are known):

1. Queued jobs are admitted in order while they fit the free rows.
2. When the head of the queue does not fit, it gets a reservation: the tick at which enough
   running jobs will have finished for it to fit (the *shadow* tick), and the rows that will
   still be spare at that tick beside it.
3. A job behind the head may then overtake it only if it fits now and either finishes by the
   shadow tick or fits in the spare rows. So overtaking never delays the head's start (counted
   in ticks; cancellations and failures only free rows earlier), no job starves, and small
   jobs still fill rows a strict FIFO would leave idle.

Not thread-safe: the engine calls it under its lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["Drop", "ScheduledJob", "Scheduler", "SchedulerOutput"]


class Drop(str, Enum):
    """Why :meth:`Scheduler.schedule` dropped a job."""

    CANCELLED = "cancelled"
    EXPIRED = "expired"  # past its deadline


@dataclass(eq=False)
class ScheduledJob:
    """One job as the scheduler sees it (compared by identity)."""

    id: int
    rows: int
    total_steps: int
    steps_done: int = 0
    deadline: float | None = None
    cancelled: bool = False

    @property
    def remaining(self) -> int:
        """Ticks until it ends when it runs."""
        return self.total_steps - self.steps_done


@dataclass
class SchedulerOutput:
    """One :meth:`Scheduler.schedule` call's decisions: the jobs dropped (cancelled or expired,
    running ones first, then queued ones in queue order) and the jobs admitted (in order)."""

    dropped: list[tuple[int, Drop]] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)


class Scheduler:
    """The queue and the running set of one engine (policy in the module docstring).

    Args:
        max_batch: the most rows of the running jobs (an oversized job alone excepted).
    """

    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = int(max_batch)
        self._queue: deque[ScheduledJob] = deque()
        self._running: list[ScheduledJob] = []
        self._jobs: dict[int, ScheduledJob] = {}

    # ----------------------------------------------------------------- views

    @property
    def queued(self) -> tuple[ScheduledJob, ...]:
        """The waiting jobs, head first."""
        return tuple(self._queue)

    @property
    def running(self) -> tuple[ScheduledJob, ...]:
        """The jobs in the next forward, in the order they were admitted."""
        return tuple(self._running)

    @property
    def running_rows(self) -> int:
        return sum(job.rows for job in self._running)

    @property
    def has_work(self) -> bool:
        """Whether a job is queued or running."""
        return bool(self._jobs)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._jobs

    def queue_position(self, job_id: int) -> int | None:
        """0 for the head of the queue, 1 behind it, ...; None once admitted (or gone)."""
        for position, job in enumerate(self._queue):
            if job.id == job_id:
                return position
        return None

    # ----------------------------------------------------------------- changes

    def add(self, job_id: int, rows: int, total_steps: int, deadline: float | None = None) -> ScheduledJob:
        """Queue a job at the back."""
        if job_id in self._jobs:
            raise ValueError(f"job {job_id} is already scheduled")
        if rows < 1 or total_steps < 1:
            raise ValueError("a job takes at least one row and one step")
        job = ScheduledJob(job_id, int(rows), int(total_steps), deadline=deadline)
        self._jobs[job_id] = job
        self._queue.append(job)
        return job

    def cancel(self, job_id: int) -> bool:
        """Mark a queued or running job to be dropped by the next :meth:`schedule`; False when
        the scheduler no longer holds it."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancelled = True
        return True

    def advance(self) -> list[int]:
        """A tick ran: every running job did one step. The jobs that have done all their steps
        leave (their rows are free for the next :meth:`schedule`); their ids."""
        done = []
        for job in self._running:
            job.steps_done += 1
            if job.remaining <= 0:
                done.append(job.id)
        for job_id in done:
            self.finish(job_id)
        return done

    def finish(self, job_id: int) -> bool:
        """Remove a job that ended outside :meth:`schedule` (done or failed); its rows are free
        for the next :meth:`schedule`. False when it was not held."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        if job in self._running:
            self._running.remove(job)
        else:
            self._queue.remove(job)
        return True

    def clear(self) -> list[int]:
        """Remove every job; their ids, running ones first, then queued ones in order."""
        ids = [job.id for job in (*self._running, *self._queue)]
        self._running.clear()
        self._queue.clear()
        self._jobs.clear()
        return ids

    def schedule(self, now: float) -> SchedulerOutput:
        """Before a tick: drop the jobs cancelled or past their deadline at ``now`` (a cancel
        wins over a deadline), then admit queued jobs. The caller runs :attr:`running` next."""
        output = SchedulerOutput()
        for job in (*self._running, *self._queue):
            if job.cancelled:
                output.dropped.append((job.id, Drop.CANCELLED))
            elif job.deadline is not None and now >= job.deadline:
                output.dropped.append((job.id, Drop.EXPIRED))
        for job_id, _ in output.dropped:
            self.finish(job_id)
        output.admitted = [job.id for job in self._admit()]
        return output

    # ----------------------------------------------------------------- policy

    def _admit(self) -> list[ScheduledJob]:
        """Move queued jobs into the running set (steps 1 to 3 of the module docstring)."""
        admitted: list[ScheduledJob] = []
        if not self._queue:
            return admitted
        free = self.max_batch - self.running_rows
        queue = list(self._queue)
        # 1. in order, while they fit (an oversized job fits only an idle engine)
        while queue and self._fits(queue[0], free, admitted):
            job = queue.pop(0)
            admitted.append(job)
            free -= job.rows
        # 2. the head's reservation and 3. backfilling behind it
        if queue and free > 0:
            shadow, spare = self._reservation(queue[0], admitted)
            for job in list(queue[1:]):
                if job.rows > free or job.rows > self.max_batch:
                    continue
                if job.remaining <= shadow:
                    pass  # ends by the shadow tick
                elif job.rows <= spare:
                    spare -= job.rows  # still runs at the shadow tick, beside the head
                else:
                    continue  # would delay the head
                queue.remove(job)
                admitted.append(job)
                free -= job.rows
        self._queue = deque(queue)
        self._running.extend(admitted)
        return admitted

    def _fits(self, job: ScheduledJob, free: int, admitted: list[ScheduledJob]) -> bool:
        if job.rows <= free:
            return True
        return job.rows > self.max_batch and not self._running and not admitted

    def _reservation(self, head: ScheduledJob, admitted: list[ScheduledJob]) -> tuple[int, int]:
        """(shadow, spare) for the blocked head of the queue: in how many ticks it fits (the
        jobs in flight finish in order of their remaining steps; an oversized head needs them
        all gone) and how many rows will then be spare beside it."""
        in_flight = sorted((job.remaining, job.rows) for job in (*self._running, *admitted))
        used = sum(rows for _, rows in in_flight)
        oversized = head.rows > self.max_batch
        for remaining, rows in in_flight:
            used -= rows
            if oversized and used == 0:
                return remaining, 0
            if not oversized and self.max_batch - used >= head.rows:
                return remaining, self.max_batch - used - head.rows
        return 0, 0  # not reached: with nothing in flight the head fits
