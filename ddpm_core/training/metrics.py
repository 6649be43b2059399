"""What a user follows while training: loss, learning rate, gradient norm, images/s and ETA.

Every ``log_every`` steps one record goes to the progress bar, to ``RUN_DIR/log.jsonl`` (one
JSON object per line) and, when asked for, to TensorBoard (``RUN_DIR/tensorboard``; needs the
optional ``tensorboard`` package). Loss and gradient norm are averaged over the steps since the
last record and over the ranks; only rank 0 shows or writes anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ddpm_core.errors import UsageError
from ddpm_core.training.distributed import DistContext

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """Raise a one-line :class:`UsageError` when the optional ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--log tensorboard needs the tensorboard package: pip install tensorboard")


@dataclass(frozen=True)
class MetricsRecord:
    """One line of ``log.jsonl``: the window of steps that ends at ``step``."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    images_per_s: float
    steps_per_s: float
    elapsed_s: float
    eta_s: float

    def as_json(self) -> dict[str, Any]:
        """The record with rounded values, as written to ``log.jsonl``."""
        return {
            "step": self.step,
            "loss": round(self.loss, 6),
            "lr": self.lr,
            "grad_norm": round(self.grad_norm, 6),
            "images_per_s": round(self.images_per_s, 2),
            "steps_per_s": round(self.steps_per_s, 3),
            "elapsed_s": round(self.elapsed_s, 1),
            "eta_s": round(self.eta_s, 1),
        }


class TrainingMetrics:
    """Sums each step's loss and gradient norm on the device (no host sync) and turns them into a
    :class:`MetricsRecord` every ``log_every`` steps; a context manager closing its outputs."""

    def __init__(
        self,
        run_dir: Path,
        context: DistContext,
        *,
        start_step: int,
        max_steps: int,
        global_batch: int,
        elapsed_s: float,
        progress: bool,
        tensorboard: bool,
    ) -> None:
        self.context = context
        self.max_steps = max_steps
        self.global_batch = global_batch
        self.elapsed_s = elapsed_s
        self.sums = torch.zeros(2, device=context.device)  # loss, gradient norm
        self.count = 0
        self.window_start, self.window_step = time.perf_counter(), start_step
        writes = context.is_main
        self.bar = tqdm(
            total=max_steps, initial=start_step, disable=not (progress and writes), unit="step", dynamic_ncols=True
        )
        self.log = (run_dir / LOG_FILE).open("a") if writes else None
        self.board = None
        if tensorboard and writes:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a stopped run logged after the state it resumes from
            self.board = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step or None)

    def __enter__(self) -> TrainingMetrics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count one step's loss and gradient norm (scalar tensors on the device)."""
        self.sums[0] += loss
        self.sums[1] += grad_norm
        self.count += 1
        self.bar.update(1)

    def record(self, step: int, lr: float) -> MetricsRecord:
        """Close the window ending at ``step`` (every rank must call it: one collective); rank 0 writes it.

        Raises:
            FloatingPointError: the loss is no longer finite.
        """
        loss, grad_norm = (self.context.mean(self.sums) / max(self.count, 1)).tolist()  # one host sync
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}")
        now = time.perf_counter()
        seconds = max(now - self.window_start, 1e-9)
        steps_per_s = (step - self.window_step) / seconds
        self.elapsed_s += seconds
        record = MetricsRecord(
            step=step,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            images_per_s=steps_per_s * self.global_batch,
            steps_per_s=steps_per_s,
            elapsed_s=self.elapsed_s,
            eta_s=(self.max_steps - step) / steps_per_s if steps_per_s > 0 else math.inf,
        )
        self._write(record)
        self.sums.zero_()
        self.count = 0
        self.window_start, self.window_step = time.perf_counter(), step
        return record

    def _write(self, record: MetricsRecord) -> None:
        if self.log is not None:
            self.log.write(json.dumps(record.as_json()) + "\n")
            self.log.flush()
        self.bar.set_postfix(
            loss=f"{record.loss:.4f}",
            lr=f"{record.lr:.2e}",
            grad=f"{record.grad_norm:.3f}",
            img_s=f"{record.images_per_s:.1f}",
        )
        if self.board is not None:
            for name in ("loss", "lr", "grad_norm", "images_per_s"):
                self.board.add_scalar(f"train/{name}", getattr(record, name), record.step)
            self.board.flush()

    def close(self) -> None:
        """Close the progress bar, the log file and the TensorBoard writer."""
        self.bar.close()
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.board is not None:
            self.board.close()
            self.board = None


def truncate_log(run_dir: Path, step: int) -> None:
    """Drop ``log.jsonl`` lines written after ``step`` (the state being resumed), so each step is logged once."""
    log_path = run_dir / LOG_FILE
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    log_path.write_text("".join(line + "\n" for line in kept))
