"""Data-parallel training under torchrun: 2 gloo ranks on the CPU (one thread each) against one
process, a rank killed and the run resumed on 2 ranks and on 1, and failing or hanging ranks.

The runs go through the real ``ddpm train`` command, started by torchrun through
``tests/core/torchrun_harness.py`` (which adds probes and injects the faults); each rank gets
its own ``--out`` (``OUT/rank<R>``) as on machines without a shared file system, so a file
written by any rank but 0 would show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddpm_core.cli as cli
from ddpm_core.errors import DistributedError
from ddpm_core.training import Trainer
from ddpm_core.training.distributed import (
    DistContext,
    check_batch_split,
    collective_errors,
    init_distributed,
    short_message,
)
from tests.core.conftest import write_mnist_like

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("torchrun_harness.py")
# a 2-level U-Net of 16-32 channels on 12 digits (3 shapes x 4): batches of 6 never straddle an epoch,
# so a step's 6 images are 6 different ones
TINY = [
    "--base-channels", 16, "--channel-mult", "1,2", "--num-res-blocks", 1, "--dropout", 0,
    "--num-train-timesteps", 20, "--scale-betas", "--batch-size", 6, "--warmup-steps", 2,
    "--log-every", 1, "--no-progress", "--seed", 3,
]  # fmt: skip
EVERY_2 = ["--checkpoint-every", 2]


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def torchrun(*args, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    """``ddpm`` on 2 gloo ranks of this machine through the harness; each rank writes to OUT/rank<R>."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["--monitor-interval", "0.1", str(HARNESS), *map(str, args)]
    env = environment(DDPM_TEST_OUT_PER_RANK="1", **extra)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model and EMA tensors of a run's training state."""
    return {k: v for k, v in load_file(run_dir / "train_state.safetensors").items() if k.startswith(("model.", "ema."))}


def assert_same_weights(actual: Path, expected: Path, tolerance: float) -> None:
    """The model's and the EMA's weights agree to ``tolerance`` relative to their norm (0: bit for bit),
    and every tensor to 10 x ``tolerance`` of its own norm.

    Runs that sum gradients in another order cannot agree bit for bit, and AdamW amplifies the
    rounding in gradients that are mathematically almost zero (e.g. the last bias, whose gradient
    is the batch's mean prediction error) into updates of the learning rate's size: over 5 steps
    such a small tensor differs by up to about 1e-5 of its norm, the weights as a whole by 1e-7.
    """
    got, want = state(actual), state(expected)
    assert got.keys() == want.keys() and got
    for prefix in ("model.", "ema."):
        names = [name for name in want if name.startswith(prefix)]
        if tolerance == 0:
            assert all(torch.equal(got[name], want[name]) for name in names), prefix
            continue
        difference = torch.cat([(got[name] - want[name]).flatten() for name in names]).norm()
        error = difference / torch.cat([want[name].flatten() for name in names]).norm()
        assert error <= tolerance, f"{prefix} weights: relative difference {error:.2e}"
        for name in names:
            error = (got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-12)
            assert error <= 10 * tolerance, f"{name}: relative difference {error:.2e}"


def log_steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_mnist_like(tmp_path_factory.mktemp("digits"), [0, 1, 7], copies=4)


def train_args(digits: Path, out: Path, steps: int, *extra) -> list:
    return ["train", "--dataset", "mnist", "--data-dir", digits, "--out", out, "--max-steps", steps, *TINY, *extra]


def in_process(monkeypatch, *args) -> dict[int, list[int]]:
    """``ddpm`` as one plain process (no torchrun), here; returns the data indices of each step."""
    seen: dict[int, list[int]] = {}
    original = Trainer.train_step

    def train_step(self, shard):
        seen[self.step] = shard.indices.tolist()
        return original(self, shard)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert cli.main([str(arg) for arg in args]) == 0
    return seen


@pytest.fixture(scope="module")
def two_ranks(digits, tmp_path_factory) -> Path:
    """5 steps on 2 ranks, checkpoints every 2 steps: the uninterrupted run the other runs must match."""
    root = tmp_path_factory.mktemp("two-ranks")
    succeeded(torchrun(*train_args(digits, root / "run", 5, *EVERY_2), DDPM_TEST_PROBE=str(root / "probe")))
    return root


@pytest.mark.e2e  # torchrun in a subprocess
def test_two_ranks_train_as_one_process_and_only_rank_0_writes(two_ranks, digits, tmp_path, monkeypatch):
    """Same seed and weights, global batch 6: 2 ranks of 3 samples and 1 process of 6 agree after 5
    steps (model and EMA to 1e-5), each step's two shares are disjoint and together are the one
    process's batch, both ranks end with the same EMA, and rank 1 writes nothing."""
    one = in_process(monkeypatch, *train_args(digits, tmp_path / "one", 5, *EVERY_2))
    two = two_ranks / "run" / "rank0"
    assert_same_weights(two, tmp_path / "one", 1e-5)
    assert not (two_ranks / "run" / "rank1").exists()
    assert {path.name for path in two.iterdir()} == {
        "model.safetensors", "train_state.safetensors", "train_state.json", "log.jsonl", "train_config.json",
    }  # fmt: skip

    ranks = [json.loads((two_ranks / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["ema_sha256"] == ranks[1]["ema_sha256"]
    for step in range(5):
        first, second = ranks[0]["indices"][str(step)], ranks[1]["indices"][str(step)]
        assert len(first) == len(second) == 3 and not set(first) & set(second), (step, first, second)
        assert first + second == one[step]
    # the logged loss is the mean over the whole global batch, as one process logs it
    for two_rank, one_process in zip(log_steps(two), log_steps(tmp_path / "one"), strict=True):
        assert two_rank["step"] == one_process["step"]
        assert two_rank["loss"] == pytest.approx(one_process["loss"], rel=1e-4)
        assert two_rank["grad_norm"] == pytest.approx(one_process["grad_norm"], rel=1e-4)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("ddpm: error:")]


@pytest.mark.e2e  # torchrun in a subprocess
def test_a_failing_rank_ends_the_run_with_one_line(digits, tmp_path):
    """Rank 1 fails at its third step: the whole run ends (no hang) with that rank's error in one
    line, and no traceback from this project's code."""
    started = time.monotonic()
    result = torchrun(*train_args(digits, tmp_path / "run", 50), DDPM_TEST_FAULT="raise:1:2", timeout=90)
    assert result.returncode != 0 and time.monotonic() - started < 60
    cause = [line for line in error_lines(result) if "injected" in line]
    assert cause == ["ddpm: error: rank 1 of 2: injected: this rank could not read its batch"], result.stderr
    # rank 0 ends too: stopped by torchrun, or reporting in one line that it lost contact
    assert all("lost contact" in line for line in error_lines(result) if line not in cause), result.stderr
    assert "ddpm_core" not in "".join(line for line in result.stderr.splitlines() if line.startswith("  File"))


@pytest.mark.e2e  # torchrun in a subprocess
def test_an_error_rank_0_finds_for_all_is_one_line(digits, tmp_path):
    """Nothing to resume in --out: rank 0 (which alone reads the run directory) says so in one line;
    rank 1, which has no copy of the directory anyway, ends quietly."""
    result = torchrun(*train_args(digits, tmp_path / "empty", 5, "--resume"), timeout=90)
    assert result.returncode != 0
    assert error_lines(result) == [f"ddpm: error: rank 0 of 2: --resume: no training state in {tmp_path}/empty/rank0"]


@pytest.mark.e2e  # torchrun in subprocesses
def test_a_killed_run_resumes_exactly_on_two_ranks_and_on_one(two_ranks, digits, tmp_path, monkeypatch):
    """Rank 1 is SIGKILLed at step 4 of 5 (once rank 0 has saved step 4): resumed on 2 ranks the run
    ends with the uninterrupted run's weights bit for bit; resumed on 1 process (in 2 micro-batches
    of 3) it ends with them to 1e-5."""
    killed = torchrun(*train_args(digits, tmp_path / "split", 5, *EVERY_2), DDPM_TEST_FAULT="kill:1:4")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr
    saved = tmp_path / "split" / "rank0"
    assert json.loads((saved / "train_state.json").read_text())["step"] == 4
    shutil.copytree(saved, tmp_path / "on-one")

    succeeded(torchrun(*train_args(digits, tmp_path / "split", 5, *EVERY_2, "--resume")))
    assert_same_weights(saved, two_ranks / "run" / "rank0", 0)
    assert [entry["step"] for entry in log_steps(saved)] == [1, 2, 3, 4, 5]  # each step logged once
    assert not (tmp_path / "split" / "rank1").exists()

    in_process(monkeypatch, *train_args(digits, tmp_path / "on-one", 5, *EVERY_2, "--resume", "--accumulate", 2))
    assert_same_weights(tmp_path / "on-one", two_ranks / "run" / "rank0", 1e-5)


@pytest.mark.e2e  # waits out a collective timeout
def test_a_hanging_rank_ends_the_run_after_the_timeout(digits, tmp_path):
    """Rank 1 hangs at its third step: rank 0 gives up after --dist-timeout (5 s) with one line and the
    run ends instead of waiting forever."""
    started = time.monotonic()
    args = train_args(digits, tmp_path / "run", 50, "--dist-timeout", 5)
    result = torchrun(*args, DDPM_TEST_FAULT="hang:1:2", timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 90
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("ddpm: error: rank 0 of 2: lost contact"), result.stderr
    assert "within the 5 s timeout" in lines[0] and "--resume" in lines[0]


def test_a_plain_process_needs_no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert not context.enabled and context.is_main and context.device == torch.device("cpu")
    assert context.shard(8) == slice(0, 8) and context.from_main(lambda: 5) == 5
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: no process group either
    assert not init_distributed("cpu").enabled and not torch.distributed.is_initialized()


def test_shares_and_batch_splits():
    assert [DistContext(rank, 4).shard(8) for rank in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    check_batch_split(12, 2, 3)
    with pytest.raises(ValueError, match=r"global batch 10 .* 2 rank\(s\) x 3 micro-batch.*multiple of 6"):
        check_batch_split(10, 2, 3)
    with pytest.raises(ValueError, match="at least 1"):
        check_batch_split(10, 1, 0)


def test_collective_messages_are_one_short_line():
    error = RuntimeError("[/__w/pytorch/third_party/gloo/unbound_buffer.cc:78] Timed out waiting 5000ms\nmore")
    assert short_message(error) == "Timed out waiting 5000ms"
    closed = RuntimeError("Connection closed by peer [127.0.0.1]:32154. This is typically caused by a crash.")
    assert short_message(closed) == "Connection closed by peer [127.0.0.1]:32154"
    context = DistContext(1, 2)
    with pytest.raises(DistributedError) as raised, collective_errors(context):
        raise closed
    assert str(raised.value).startswith("rank 1 of 2: lost contact with the other ranks (Connection closed by peer")
    assert "\n" not in str(raised.value) and "another rank ended" in str(raised.value)
    with pytest.raises(ZeroDivisionError), collective_errors(context):  # not a collective's failure
        raise ZeroDivisionError
    with pytest.raises(RuntimeError, match="closed"), collective_errors(DistContext()):  # one process: as is
        raise closed
