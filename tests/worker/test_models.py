"""The worker runs exactly its job's spec: a model is found by name and checked by the SHA-256 of
its weights; cached weights serve the jobs queued for them even after the file is replaced."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from contract.registry import ModelRegistry
from contract.settings import Settings
from contract.spec import JobSpec
from ddpm_core.checkpoint_header import file_sha256
from tests.service.conftest import make_tiny_checkpoint
from worker.models import ModelCache, SpecMismatch


def spec_for(path: Path, **overrides) -> JobSpec:
    fields = dict(model=path.stem, weights_sha256=file_sha256(path), sampler="ddim", steps=10, guidance=0.0)
    fields.update(seed=0, digit=1, n=1)
    fields.update(overrides)
    return JobSpec(**fields)


def test_weights_are_checked_against_the_spec_and_cached_by_hash(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "mnist.safetensors")
    cache = ModelCache(ModelRegistry(Settings(model_dir=tmp_path)), torch.device("cpu"))
    first = spec_for(path)
    loaded = cache.for_spec(first)
    assert loaded.weights_sha256 == first.weights_sha256
    with pytest.raises(SpecMismatch, match="changed since the job was queued"):
        cache.for_spec(spec_for(path, weights_sha256="0" * 64))

    make_tiny_checkpoint(path, num_train_timesteps=100)  # the file is replaced by other weights
    assert cache.for_spec(first) is loaded  # a job queued for the old weights still runs on them
    second = spec_for(path)
    assert second.weights_sha256 != first.weights_sha256
    assert cache.for_spec(second).schedule.num_train_timesteps == 100


def test_a_classifier_beside_the_models_is_left_out_quietly_and_a_bad_file_is_named(tmp_path: Path) -> None:
    """The shipped model directory holds mnist_classifier.safetensors beside the models: not a
    model, and no warning at every start; any other unusable file is still named once."""
    make_tiny_checkpoint(tmp_path / "mnist.safetensors")
    shipped = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist_classifier.safetensors"
    (tmp_path / "mnist_classifier.safetensors").write_bytes(shipped.read_bytes())
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    registry = ModelRegistry(Settings(_env_file=None, model_dir=str(tmp_path), default_model="mnist"))
    logger = logging.getLogger("contract.registry")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    level, disabled = logger.level, logger.disabled
    logger.setLevel(logging.DEBUG)
    logger.disabled = False  # other tests' logging setups may have disabled existing loggers
    try:
        assert [model.name for model in registry.list()] == ["mnist"]
        registry.list()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    warnings = [record.getMessage() for record in records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "broken.safetensors" in warnings[0]
    assert any("mnist_classifier" in record.getMessage() for record in records if record.levelno == logging.DEBUG)
