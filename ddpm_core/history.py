"""A checkpoint's training history: every session of training its weights went through. Torch-free.

A checkpoint's ``training`` metadata holds ``history``, a list of :class:`TrainingRun` (JSON
objects), oldest first. A run trained from scratch starts it; ``ddpm train --resume`` appends the
session that continues a run; ``--init-from`` (fine-tuning) copies the history of the checkpoint
it starts from and appends its own run. The weights' total optimizer steps is the sum over the
history (:func:`trained_steps`), which ``GET /models`` reports.

A checkpoint written before histories were kept has only ``steps`` (its run's step counter): it
reads as one run of that many steps whose start is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ddpm_core.config import StoredConfig
from ddpm_core.errors import CheckpointError

HISTORY_KEY = "history"
STARTS = ("scratch", "resume", "weights", "unknown")


@dataclass(frozen=True)
class TrainingRun(StoredConfig):
    """One session of training.

    Attributes:
        steps: optimizer steps trained in this session.
        start: 'scratch' (new weights), 'resume' (continued a stopped run exactly: weights,
            optimizer and data order), 'weights' (new optimizer from another checkpoint's
            weights, ``--init-from``) or 'unknown' (recorded before histories were kept).
        source: for 'weights', the checkpoint it started from (file name and SHA-256).
        at_step: the run's step counter when the session began (non-zero for 'resume').
        batch_size, learning_rate, warmup_steps, lr_schedule, max_steps: the session's optimiser settings
            (0 / '' when not recorded).
        seconds: the session's training time.
    """

    steps: int
    start: str = "unknown"
    source: str = ""
    at_step: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = ""
    max_steps: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.at_step < 0:
            raise ValueError(f"a training run's steps and at_step must be >= 0, got {self.steps} and {self.at_step}")
        if self.start not in STARTS:
            raise ValueError(f"a training run's start must be one of {', '.join(STARTS)}, got {self.start!r}")


def training_history(training: Mapping[str, Any]) -> list[TrainingRun]:
    """The runs recorded in a checkpoint's ``training`` metadata, oldest first ([] when none).

    Raises:
        CheckpointError: ``history`` is not a list of valid runs.
    """
    if not isinstance(training, Mapping):
        raise CheckpointError("checkpoint training metadata must be a JSON object")
    history = training.get(HISTORY_KEY)
    if history is None:
        steps = training.get("steps")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0:
            return [TrainingRun(steps=steps, batch_size=_count(training.get("batch_size")))]
        return []
    if not isinstance(history, list):
        raise CheckpointError("checkpoint training metadata: history must be a list of runs")
    try:
        return [TrainingRun.from_dict(run) for run in history]
    except ValueError as error:
        raise CheckpointError(f"checkpoint training metadata: history: {error}") from None


def trained_steps(training: Mapping[str, Any]) -> int | None:
    """The weights' optimizer steps over their whole history; None when nothing is recorded."""
    history = training_history(training)
    return sum(run.steps for run in history) if history else None


def history_metadata(runs: list[TrainingRun]) -> list[dict[str, Any]]:
    """``runs`` as the JSON list stored under ``history``."""
    return [run.to_dict() for run in runs]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
