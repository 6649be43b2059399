"""worker.engine.scheduler on plain integers: a simulated clock where one tick is one forward and the
time is the tick number, no model, no thread, no torch.

``Simulation`` drives a :class:`Scheduler` as the engine does: before each tick it schedules
(drops and admits), the running jobs each do one step, the finished ones leave.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from worker.engine.scheduler import Drop, ScheduledJob, Scheduler


class Simulation:
    """Ticks of a scheduler; what started, ended and was dropped when, and each tick's rows."""

    def __init__(self, scheduler: Scheduler | int) -> None:
        self.scheduler = scheduler if isinstance(scheduler, Scheduler) else Scheduler(scheduler)
        self.tick = 0
        self.started: dict[int, int] = {}
        self.ended: dict[int, int] = {}  # the tick after its last step
        self.dropped: dict[int, tuple[Drop, int]] = {}
        self.rows: list[int] = []  # rows of each tick's forward
        self.running: list[set[int]] = []  # the jobs of each tick's forward

    def add(self, job_id: int, rows: int, steps: int, deadline: float | None = None) -> None:
        self.scheduler.add(job_id, rows, steps, deadline)

    def step(self) -> list[int]:
        """One tick; the jobs it admitted."""
        decision = self.scheduler.schedule(now=self.tick)
        for job_id, reason in decision.dropped:
            self.dropped[job_id] = (reason, self.tick)
        for job_id in decision.admitted:
            self.started[job_id] = self.tick
        running = self.scheduler.running
        self.rows.append(sum(job.rows for job in running))
        self.running.append({job.id for job in running})
        if running:
            for job_id in self.scheduler.advance():
                self.ended[job_id] = self.tick + 1
        self.tick += 1
        return decision.admitted

    def run(self, ticks: int | None = None) -> None:
        """``ticks`` ticks, or until nothing is queued or running."""
        for _ in range(ticks if ticks is not None else 100_000):
            if ticks is None and not self.scheduler.has_work:
                return
            self.step()
        assert ticks is not None, "the scheduler never ran out of work"


def test_the_scheduler_never_imports_torch() -> None:
    code = "import sys, worker.engine.scheduler, worker.engine.stats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_fifo_in_order_while_jobs_fit() -> None:
    sim = Simulation(4)
    for job_id, rows, steps in [(1, 2, 3), (2, 2, 5), (3, 4, 2), (4, 4, 1)]:
        sim.add(job_id, rows, steps)
    assert [sim.scheduler.queue_position(job_id) for job_id in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert sim.step() == [1, 2]
    assert sim.scheduler.queue_position(1) is None and sim.scheduler.queue_position(3) == 0
    sim.run()
    assert sim.started == {1: 0, 2: 0, 3: 5, 4: 7}
    assert sim.ended == {1: 3, 2: 5, 3: 7, 4: 8}
    assert max(sim.rows) <= 4


def test_backfill_that_ends_by_the_heads_start_is_admitted_and_one_that_would_delay_it_is_refused() -> None:
    """Cap 4: a 1-row job runs 12 steps, so the 4-row head can start at tick 12 (its shadow
    tick, no spare rows). 3 rows are free until then. A naive backfill of any 1-row job would
    hold a row at tick 12 unless it ends by then and delay the head."""
    sim = Simulation(4)
    sim.add(1, rows=1, steps=12)  # running
    sim.add(2, rows=4, steps=3)  # the head: blocked until tick 12
    sim.add(3, rows=1, steps=20)  # fits now, but would still run at tick 12: refused
    sim.add(4, rows=1, steps=13)  # one step too long: refused
    sim.add(5, rows=1, steps=12)  # ends exactly at tick 12: admitted
    sim.add(6, rows=1, steps=4)  # admitted
    assert sim.step() == [1, 5, 6]
    sim.run()
    assert sim.started[2] == 12  # exactly when the long job's row is free: not delayed
    assert sim.started[3] >= sim.ended[2] and sim.started[4] >= sim.ended[2]
    assert max(sim.rows) <= 4
    assert naive_start_of_the_head(4, [(1, 12), (4, 3), (1, 20), (1, 13), (1, 12), (1, 4)]) > 12


def test_backfill_into_the_rows_spare_beside_the_head_and_no_more() -> None:
    """Cap 8: the 6-row head fits at tick 10, with 2 rows spare beside it. A 2-row job of any
    length may take them; a 1-row job after it fits the free rows now but not the spare ones at
    tick 10 (2 + 1 + 6 > 8), so it is refused."""
    sim = Simulation(8)
    sim.add(1, rows=4, steps=10)
    sim.add(2, rows=6, steps=5)  # the head
    sim.add(3, rows=2, steps=100)  # into the spare rows
    sim.add(4, rows=1, steps=100)  # would delay the head
    sim.add(5, rows=1, steps=10)  # ends by tick 10: still welcome
    assert sim.step() == [1, 3, 5]
    sim.run()
    assert sim.started[2] == 10 and sim.started[4] == 15
    assert sim.running[9] == {1, 3, 5} and sim.running[10] == {2, 3}
    assert max(sim.rows) <= 8
    assert naive_start_of_the_head(8, [(4, 10), (6, 5), (2, 100), (1, 100), (1, 10)]) > 10


def test_the_shadow_tick_counts_every_job_in_flight() -> None:
    """Cap 4, 2 + 1 rows running: the 3-row head fits once the 2-row job ends (tick 5), beside
    the 1-row one (which ends at tick 8); a 1-row backfill must end by tick 5."""
    sim = Simulation(4)
    sim.add(1, rows=2, steps=5)
    sim.add(2, rows=1, steps=8)
    sim.add(3, rows=3, steps=2)  # the head
    sim.add(4, rows=1, steps=6)  # ends at 6 > 5: refused
    sim.add(5, rows=1, steps=5)  # ends at 5: admitted
    assert sim.step() == [1, 2, 5]
    sim.run()
    assert sim.started[3] == 5 and sim.running[5] == {2, 3}
    assert sim.started[4] == 7  # after the head, once it has ended


def test_a_job_over_the_cap_runs_alone_once_nothing_else_runs() -> None:
    sim = Simulation(4)
    sim.add(1, rows=1, steps=6)
    sim.add(2, rows=6, steps=5)  # oversized: waits for an idle engine (tick 6)
    sim.add(3, rows=1, steps=6)  # ends when job 1 does: admitted
    sim.add(4, rows=1, steps=8)  # would delay it
    sim.run()
    assert [sim.started[job_id] for job_id in (1, 2, 3, 4)] == [0, 6, 0, 11]
    assert sim.rows == [2] * 6 + [6] * 5 + [1] * 8
    assert all(sim.running[tick] == {2} for tick in range(6, 11))  # alone

    idle = Simulation(4)
    idle.add(1, rows=9, steps=2)  # at the head of an idle engine: admitted at once, alone
    idle.add(2, rows=1, steps=1)
    assert idle.step() == [1]
    idle.run()
    assert idle.started == {1: 0, 2: 2}


def test_cancel_frees_the_rows_before_the_next_tick() -> None:
    sim = Simulation(4)
    sim.add(1, rows=4, steps=10)
    sim.add(2, rows=2, steps=3)
    sim.add(3, rows=1, steps=3)
    sim.run(3)
    assert sim.started == {1: 0}
    assert sim.scheduler.cancel(3)  # queued: it never starts
    assert sim.scheduler.cancel(1)  # running: its rows are free for tick 3
    assert sim.step() == [2]
    assert sim.dropped == {1: (Drop.CANCELLED, 3), 3: (Drop.CANCELLED, 3)}
    assert sim.running[3] == {2} and 3 not in sim.started
    sim.run()
    assert not sim.scheduler.cancel(1) and not sim.scheduler.cancel(2)  # gone: nothing to cancel
    assert not sim.scheduler.has_work


def test_a_deadline_drops_the_job_and_frees_its_rows() -> None:
    sim = Simulation(4)
    sim.add(1, rows=3, steps=100, deadline=5)  # running when its time is up
    sim.add(2, rows=3, steps=2)  # waits for job 1's rows
    sim.add(3, rows=2, steps=50, deadline=3)  # queued when its time is up
    sim.add(4, rows=1, steps=2, deadline=9)  # backfilled, ends in time
    sim.run()
    assert sim.dropped == {3: (Drop.EXPIRED, 3), 1: (Drop.EXPIRED, 5)}
    assert sim.started == {1: 0, 4: 0, 2: 5}
    assert sim.ended == {4: 2, 2: 7}
    cancelled = Simulation(2)
    cancelled.add(1, rows=1, steps=10, deadline=3)
    cancelled.run(3)
    cancelled.scheduler.cancel(1)
    cancelled.step()
    assert cancelled.dropped == {1: (Drop.CANCELLED, 3)}  # a cancel wins over the deadline


def test_finish_frees_a_failed_jobs_rows_and_clear_empties() -> None:
    scheduler = Scheduler(4)
    for job_id in (1, 2, 3):
        scheduler.add(job_id, rows=2, total_steps=5)
    assert scheduler.schedule(now=0).admitted == [1, 2]
    assert scheduler.finish(1) and not scheduler.finish(1)  # e.g. its callback failed
    assert scheduler.schedule(now=0).admitted == [3] and scheduler.running_rows == 4
    assert scheduler.clear() == [2, 3] and not scheduler.has_work
    with pytest.raises(ValueError):
        scheduler.add(4, rows=0, total_steps=1)


class GreedyScheduler(Scheduler):
    """A naive backfill: first fit in queue order, no reservation for the head."""

    def _admit(self) -> list[ScheduledJob]:
        free = self.max_batch - self.running_rows
        admitted = []
        for job in list(self._queue):
            if self._fits(job, free, admitted):
                self._queue.remove(job)
                admitted.append(job)
                free -= job.rows
        self._running.extend(admitted)
        return admitted


def naive_start_of_the_head(cap: int, jobs: list[tuple[int, int]]) -> int:
    """When job 2 of ``jobs`` (rows, steps; ids from 1) starts under :class:`GreedyScheduler`."""
    sim = Simulation(GreedyScheduler(cap))
    for job_id, (rows, steps) in enumerate(jobs, start=1):
        sim.add(job_id, rows, steps)
    sim.run()
    return sim.started[2]


@pytest.mark.parametrize(("policy", "starves"), [(Scheduler, False), (GreedyScheduler, True)])
def test_a_stream_of_small_jobs_never_starves_a_big_one(policy, starves) -> None:
    """Cap 4, a 1-row 4-step job arrives every tick: a first-fit scheduler fills every row that
    comes free and the 4-row job waits forever; the reservation lets it start within 4 ticks."""
    sim = Simulation(policy(4))
    next_id = iter(range(100, 10_000))
    for _ in range(4):
        sim.add(next(next_id), rows=1, steps=4)
        sim.step()
    sim.add(1, rows=4, steps=3)
    for _ in range(300):
        sim.add(next(next_id), rows=1, steps=4)
        sim.step()
    if starves:
        assert 1 not in sim.started
    else:
        assert sim.started[1] == 7  # once the 3 small jobs running at tick 4 have ended
        assert sum(rows for rows in sim.rows[-100:]) > 3 * 100  # the small jobs keep the rows busy


def earliest_start(head: ScheduledJob, running: list[ScheduledJob], cap: int, tick: int) -> int:
    """Brute force: the first tick at which ``head`` fits if nothing else were admitted."""
    for wait in range(0, 10_000):
        still = [job for job in running if job.remaining > wait]
        used = sum(job.rows for job in still)
        if (head.rows > cap and not still) or (head.rows <= cap and used + head.rows <= cap):
            return tick + wait
    raise AssertionError("never fits")


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_the_head_starts_when_it_first_could_and_every_job_runs(seed) -> None:
    """A random stream near full load (some jobs over the cap). Whenever the head of the queue
    is blocked, its start is predicted by brute force from the jobs in flight before any
    backfill; it starts exactly then (backfilling never delays it), within the longest job's
    steps of becoming the head; every job runs; the cap holds but for a job alone."""
    rng = random.Random(seed)
    cap, max_steps = 8, 20
    sim = Simulation(cap)
    predicted: dict[int, int] = {}
    head_since: dict[int, int] = {}
    submitted = 0
    while sim.tick < 1500 or sim.scheduler.has_work:
        if sim.tick < 1500 and rng.random() < 0.2:
            submitted += 1
            sim.add(submitted, rows=rng.choice([1, 1, 1, 2, 2, 3, 4, 6, 8, 10]), steps=rng.randint(1, max_steps))
        queue_before = [job.id for job in sim.scheduler.queued]
        admitted = sim.step()
        prefix = 0  # step 1 admits a prefix of the queue; the rest was backfilled
        while prefix < min(len(admitted), len(queue_before)) and admitted[prefix] == queue_before[prefix]:
            prefix += 1
        backfilled = set(admitted[prefix:])
        if sim.scheduler.queued:
            head = sim.scheduler.queued[0]
            head_since.setdefault(head.id, sim.tick - 1)
            # after this tick's step: the jobs that ended are gone, the others have one step less
            in_flight = [job for job in sim.scheduler.running if job.id not in backfilled]
            start = earliest_start(head, in_flight, cap, sim.tick)
            assert predicted.setdefault(head.id, start) == start, f"job {head.id}'s start moved"
        assert sim.tick < 100_000
    assert len(sim.started) == len(sim.ended) == submitted  # nobody starved
    assert len(predicted) > 100  # the stream kept heads waiting
    for job_id, start in predicted.items():
        assert sim.started[job_id] == start, f"job {job_id} started at {sim.started[job_id]}, not {start}"
        assert start - head_since[job_id] <= max_steps
    for tick, rows in enumerate(sim.rows):
        assert rows <= cap or len(sim.running[tick]) == 1
