"""Whether a model's samples are checked after a job, as ``GET /models`` shows it. Torch-free.

The worker decides per job (:mod:`worker.check`); this is the same rule read from the model's
header, the classifier files' headers and the settings, so a client knows beforehand: image
models are read by the classifier paired to them (their own ``<model>_classifier.safetensors``,
else the default one when it was trained on their data); checkerboard point models are checked
against the board's squares; any other model says why it is not checked.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from contract.registry import ModelInfo
from contract.settings import Settings
from ddpm_core.evaluation.pairing import ModelSamples, find_classifier

POINT_DATASET = "checkerboard"
POINT_SHAPE = [2]


class CheckPlan(BaseModel):
    """How the samples of a model's jobs are checked, or why they are not."""

    model_config = ConfigDict(frozen=True)

    checked: bool = Field(description="whether each job's samples are checked")
    by: str | None = Field(None, description="what checks them; null when they are not checked")
    skipped: str | None = Field(None, description="why they are not checked; null when they are")


def check_plan(model: ModelInfo, settings: Settings) -> CheckPlan:
    """How ``model``'s samples are checked under ``settings``: by the worker's rules, read from
    the headers alone (points: the checkerboard's squares; images: the classifier the pairing
    rule of :mod:`ddpm_core.evaluation.pairing` finds, the model's own or the default one)."""
    if len(model.sample_shape) == 1:  # points: measured against their data, no file needed
        if model.dataset == POINT_DATASET and model.sample_shape == POINT_SHAPE:
            return CheckPlan(checked=True, by="the checkerboard's squares")
        return CheckPlan(checked=False, skipped=f"no measure for points of dataset {model.dataset!r}")
    samples = ModelSamples.of(model.dataset, model.class_names, model.sample_shape, {})
    found = find_classifier(samples, model.path, settings.classifier_path)
    if isinstance(found, str):
        return CheckPlan(checked=False, skipped=found)
    return CheckPlan(checked=True, by=f"the classifier {found.path.stem}")
