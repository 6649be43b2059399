"""A checkpoint's training history: a run from scratch starts it, --resume and --init-from append
to it, GET /models' training_steps is its total, ddpm export --history rewrites it without
touching a weight; the shipped MNIST model says 3,750 + 8,000 = 11,750 steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddpm_core.cli as cli
from contract.registry import ModelRegistry
from contract.settings import Settings
from ddpm_core.checkpoint_header import read_checkpoint_info
from ddpm_core.history import TrainingRun, trained_steps, training_history

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
TINY_MLP = ["--hidden-dim", "16", "--num-layers", "1", "--batch-size", "8", "--num-train-timesteps", "10"]


def train(out: Path, *args: object) -> list[TrainingRun]:
    argv = ["train", "--dataset", "checkerboard", "--out", out, "--no-progress", *TINY_MLP, *args]
    assert cli.main([str(arg) for arg in argv]) == 0
    return training_history(read_checkpoint_info(out / "model.safetensors")["training"])


def test_resume_and_init_from_append_to_the_history(tmp_path):
    first = train(tmp_path / "run", "--max-steps", 4, "--checkpoint-every", 2)
    assert [(run.steps, run.start, run.at_step) for run in first] == [(4, "scratch", 0)]
    resumed = train(tmp_path / "run", "--resume", "--max-steps", 6)
    assert [(run.steps, run.start, run.at_step) for run in resumed] == [(4, "scratch", 0), (2, "resume", 4)]
    assert resumed[1].max_steps == 6 and resumed[1].batch_size == 8
    tuned = train(tmp_path / "tuned", "--init-from", tmp_path / "run" / "model.safetensors", "--max-steps", 3)
    assert [(run.steps, run.start) for run in tuned] == [(4, "scratch"), (2, "resume"), (3, "weights")]
    assert tuned[2].source.startswith("model.safetensors (sha256 ")
    info = read_checkpoint_info(tmp_path / "tuned" / "model.safetensors")
    assert info["training"]["steps"] == 3 and trained_steps(info["training"]) == 9
    registry = ModelRegistry(Settings(model_dir=tmp_path / "tuned"))
    assert registry.get("model").training_steps == 9


def test_a_checkpoint_without_history_reads_as_one_run_of_its_steps():
    assert trained_steps({"steps": 1234}) == 1234 and trained_steps({}) is None
    assert training_history({"steps": 5, "batch_size": 2}) == [TrainingRun(steps=5, batch_size=2)]


def test_the_shipped_mnist_model_records_its_two_runs():
    training = read_checkpoint_info(CHECKPOINTS / "mnist.safetensors")["training"]
    history = training_history(training)
    assert [(run.steps, run.start) for run in history] == [(3750, "scratch"), (8000, "weights")]
    assert trained_steps(training) == 11_750
    assert ModelRegistry(Settings(model_dir=CHECKPOINTS)).get("mnist").training_steps == 11_750


def test_export_history_rewrites_the_metadata_and_keeps_every_weight(tmp_path, capsys):
    source = tmp_path / "run" / "model.safetensors"
    train(tmp_path / "run", "--max-steps", 2)
    runs = [{"steps": 5, "start": "scratch"}, {"steps": 7, "start": "weights", "source": "a.safetensors"}]
    (tmp_path / "history.json").write_text(json.dumps(runs))
    out = tmp_path / "out.safetensors"
    assert (
        cli.main(
            ["export", "--checkpoint", str(source), "--out", str(out), "--history", str(tmp_path / "history.json")]
        )
        == 0
    )
    assert trained_steps(read_checkpoint_info(out)["training"]) == 12
    before, after = load_file(str(source)), load_file(str(out))
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)
    (tmp_path / "bad.json").write_text(json.dumps([{"steps": -1}]))
    capsys.readouterr()
    code = cli.main(["export", "--checkpoint", str(source), "--out", str(out), "--history", str(tmp_path / "bad.json")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--history" in lines[0] and "steps" in lines[0], lines


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level("WARNING")
