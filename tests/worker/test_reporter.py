"""worker.progress.JobReporter: progress and previews throttled to the newest per interval, or
every one with an interval of 0 (no Redis needed: a recording store)."""

from __future__ import annotations

import numpy as np

from contract.settings import Settings
from worker.progress import JobChannel, JobReporter


class RecordingStore:
    def __init__(self) -> None:
        self.previews: list[int] = []
        self.progress_steps: list[int] = []

    def event(self, job_id: str, kind: str, data: dict) -> None:
        assert kind == "preview" and data["image"].startswith("data:image/png;base64,")
        self.previews.append(data["step"])

    def progress(self, job_id: str, step: int, total: int, eta: float, elapsed: float) -> None:
        self.progress_steps.append(step)


def updates(steps: range) -> list[tuple[int, np.ndarray | None]]:
    image = np.zeros((1, 8, 8, 1), np.uint8)
    return [(step, image) for step in steps]


def test_a_batch_of_steps_sends_only_the_newest_preview_and_progress() -> None:
    store = RecordingStore()
    settings = Settings(progress_interval_s=60.0, preview_count=20)
    reporter = JobReporter("job", JobChannel(20, False, settings), settings)
    reporter.publish(updates(range(1, 6)), store)
    assert store.previews == [5] and store.progress_steps == [5]  # the newest of the batch, not 5 of each
    reporter.publish(updates(range(6, 9)), store)  # within the interval: held back
    assert store.previews == [5] and store.progress_steps == [5]
    reporter.publish(updates(range(20, 21)), store)  # the last step's progress always goes out
    assert store.progress_steps == [5, 20]


def test_an_interval_of_zero_sends_every_step_and_preview() -> None:
    store = RecordingStore()
    settings = Settings(progress_interval_s=0.0, preview_count=20)
    reporter = JobReporter("job", JobChannel(20, False, settings), settings)
    reporter.publish(updates(range(1, 6)), store)
    reporter.publish(updates(range(6, 8)), store)
    assert store.previews == store.progress_steps == list(range(1, 8))
