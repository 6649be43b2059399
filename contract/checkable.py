"""Whether a model's samples are checked after a job, as ``GET /models`` shows it. Torch-free.

The worker decides per job (:mod:`worker.check`); this is the same rule read from the model's
header and the settings alone, so a client knows beforehand: MNIST models (1 x 28 x 28, ten
classes or none) are read by the evaluation classifier when its file is there; checkerboard
point models are checked against the board's squares; any other dataset is not checked.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from contract.registry import ModelInfo
from contract.settings import Settings

DIGIT_DATASET = "mnist"
DIGIT_SHAPE = [1, 28, 28]
DIGIT_CLASSES = 10  # the evaluation classifier's classes
POINT_DATASET = "checkerboard"
POINT_SHAPE = [2]


class CheckPlan(BaseModel):
    """How the samples of a model's jobs are checked, or why they are not."""

    model_config = ConfigDict(frozen=True)

    checked: bool = Field(description="whether each job's samples are checked")
    by: str | None = Field(None, description="what checks them; null when they are not checked")
    skipped: str | None = Field(None, description="why they are not checked; null when they are")


def check_plan(model: ModelInfo, settings: Settings) -> CheckPlan:
    """How ``model``'s samples are checked under ``settings`` (reads whether the classifier file exists)."""
    if len(model.sample_shape) == 1:  # points: measured against their data, no file needed
        if model.dataset == POINT_DATASET and model.sample_shape == POINT_SHAPE:
            return CheckPlan(checked=True, by="the checkerboard's squares")
        return CheckPlan(checked=False, skipped=f"no measure for points of dataset {model.dataset!r}")
    if model.dataset != DIGIT_DATASET:
        return CheckPlan(checked=False, skipped=f"no classifier for dataset {model.dataset!r}")
    if model.sample_shape != DIGIT_SHAPE:
        return CheckPlan(checked=False, skipped=f"no classifier for samples of shape {tuple(model.sample_shape)}")
    if len(model.class_names) not in (0, DIGIT_CLASSES):
        return CheckPlan(
            checked=False,
            skipped=f"no classifier for {len(model.class_names)} classes (the classifier has {DIGIT_CLASSES})",
        )
    path = settings.classifier_path
    if path is None:
        return CheckPlan(checked=False, skipped="the per-class check is off (DDPM_CLASSIFIER is empty)")
    if not path.is_file():
        return CheckPlan(checked=False, skipped=f"no classifier file {path.name}")
    return CheckPlan(checked=True, by=f"the digit classifier {path.stem}")
