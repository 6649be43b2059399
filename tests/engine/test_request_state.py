"""worker.engine.request_state: a job's state and handle, without an engine."""

from __future__ import annotations

import pytest

from worker.engine.request_state import EngineJob, EngineRequest, JobState, JobStatus, JobTimeLimit


def test_the_handle_asks_for_cancellation_through_its_callback_and_reads_the_state() -> None:
    asked: list[int] = []
    state = JobState(7, EngineRequest(n=2, time_limit_s=5.0), rows=4, total=10)
    job = EngineJob(state, asked.append)
    assert (job.id, job.rows, job.total, job.step, job.status) == (7, 4, 10, 0, "queued")
    assert job.deadline == pytest.approx(state.submitted_at + 5.0)
    assert job.cancel() and job.cancel_requested and asked == [7]
    job.set_running(tick=3)
    assert job.status is JobStatus.RUNNING and job.started_tick == 3 and not job.status.finished
    state.step = 4
    job.set_outcome(JobStatus.FAILED, error=JobTimeLimit.stopped(state))
    assert job.done() and job.status == "failed" and job.status.finished and str(job.status) == "failed"
    with pytest.raises(JobTimeLimit, match=r"time limit of 5 s; stopped after 4 of 10 steps"):
        job.result(0)
    assert not job.cancel() and asked == [7]  # over: the engine is not asked again
    ended = []
    job.add_done_callback(ended.append)
    assert ended == [job]
