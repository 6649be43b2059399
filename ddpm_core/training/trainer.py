"""The training loop: epsilon prediction (Ho et al. 2020, Algorithm 1) with EMA and resume.

Loss: || eps - eps_theta(sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, t, y) ||^2     (Ho eq. 14)
Labels are replaced by the null label with probability ``label_dropout`` so the same model
learns the unconditional score needed for classifier-free guidance.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ddpm_core.checkpoint import save_checkpoint
from ddpm_core.data.datasets import ImageData, TrainingData
from ddpm_core.data.fingerprint import data_fingerprint
from ddpm_core.device import pick_device
from ddpm_core.errors import CheckpointError, DatasetError
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.training.ema import EMA
from ddpm_core.training.state import load_training_state, save_training_state

logger = logging.getLogger(__name__)

LOSSES = ("mse", "l1")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; stored in the run directory and the checkpoint's metadata."""

    max_steps: int = 20_000
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    loss: str = "mse"
    checkpoint_every: int = 1000
    sample_every: int = 0
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("max_steps and batch_size must be positive")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError("label_dropout must be in [0, 1]")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("learning_rate must be > 0, warmup_steps and grad_clip >= 0")


SampleWriter = Callable[[nn.Module, int, Path], None]


def check_model_fits_data(model: nn.Module, data: TrainingData) -> None:
    """Refuse, before any step, a model whose sample shape or class count is not the data's.

    Raises:
        DatasetError: the model takes samples of another shape (C, H, W) or (D,), or has another
            number of classes than the data set names.
    """
    config = getattr(model, "config", None)
    model_shape = tuple(getattr(config, "sample_shape", data.sample_shape))
    if model_shape != tuple(data.sample_shape):
        raise DatasetError(
            f"the model takes samples of shape {list(model_shape)} but {data.name} has {list(data.sample_shape)}"
        )
    num_classes = int(getattr(model, "num_classes", 0))
    if num_classes != len(data.class_names):
        raise DatasetError(
            f"the model has {num_classes} classes but {data.name} has {len(data.class_names)}"
            + (f" ({', '.join(data.class_names[:10])})" if data.class_names else "")
        )


class Trainer:
    """Trains ``model`` on ``data`` under ``schedule``, writing to ``run_dir``:

    - ``model.safetensors``: EMA weights and metadata, at every checkpoint and at the end;
    - ``train_state.safetensors`` / ``train_state.json``: everything needed to resume exactly;
    - ``log.jsonl``: one line per ``log_every`` steps (step, loss, lr, steps/s);
    - ``samples/step_NNNNNNN.png`` from ``sample_writer`` every ``sample_every`` steps.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        data: TrainingData,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        device: str | None = None,
        sample_writer: SampleWriter | None = None,
        progress: bool = True,
    ) -> None:
        check_model_fits_data(model, data)
        self.config = config
        self.schedule = schedule
        self.data = data
        # the data's fingerprint, stored with the model: a classifier trained on other data is
        # never paired to it (ddpm_core.evaluation.pairing); None for point data sets
        self.data_fingerprint = (
            data_fingerprint(data.images, data.labels, data.class_names) if isinstance(data, ImageData) else None
        )
        self.run_dir = Path(run_dir)
        self.device = pick_device(device)
        self.on_cuda = self.device.type == "cuda"
        self.sample_writer = sample_writer
        self.progress = progress
        self.model = model.to(self.device)
        if self.on_cuda and isinstance(data, ImageData):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.step = 0
        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.null_label = int(getattr(self.model, "num_classes", 0))
        self.elapsed_seconds = 0.0

    # ----------------------------------------------------------------- one step
    def learning_rate(self, step: int) -> float:
        """Linear warm-up to the configured rate, then constant, or a cosine decay to 10% at ``max_steps``."""
        config = self.config
        if config.warmup_steps and step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        if config.lr_schedule == "cosine":
            progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
            return config.learning_rate * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))
        return config.learning_rate

    def loss(self, clean: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss on a batch (B, ...) with labels (B,); a scalar tensor."""
        batch = clean.shape[0]
        timesteps = torch.randint(
            0, self.schedule.num_train_timesteps, (batch,), device=self.device, generator=self.noise_generator
        )
        noise = torch.randn(clean.shape, device=self.device, generator=self.noise_generator)
        noisy = self.schedule.add_noise(clean, noise, timesteps)
        class_labels = None
        if self.null_label:
            drop = torch.rand(batch, device=self.device, generator=self.noise_generator) < self.config.label_dropout
            class_labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.on_cuda):
            prediction = self.model(noisy, timesteps, class_labels)
        loss_fn = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss_fn(prediction.float(), noise)

    def train_step(self) -> torch.Tensor:
        """One optimiser step on a fresh batch; returns the loss (a scalar tensor, not synced to the host)."""
        clean, labels = self.data.sample_batch(self.config.batch_size, self.data_generator)
        clean = clean.to(self.device, non_blocking=True)
        if self.on_cuda and clean.ndim == 4:
            clean = clean.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        loss = self.loss(clean, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach()

    # ----------------------------------------------------------------- the loop
    def train(self) -> Path:
        """Train until ``max_steps``; returns the path of the final checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "train_config.json").write_text(json.dumps(asdict(self.config), indent=1))
        self.model.train()
        config = self.config
        bar = tqdm(
            total=config.max_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True
        )
        loss_sum = torch.zeros((), device=self.device)
        count = 0
        window_start, window_step = time.perf_counter(), self.step
        try:
            with (self.run_dir / "log.jsonl").open("a") as log:
                while self.step < config.max_steps:
                    loss_sum += self.train_step()
                    count += 1
                    bar.update(1)
                    if self.step % config.log_every == 0 or self.step == config.max_steps:
                        now = time.perf_counter()
                        mean_loss = (loss_sum / count).item()  # one host sync per log line
                        if not math.isfinite(mean_loss):
                            raise FloatingPointError(f"loss became {mean_loss} at step {self.step}")
                        steps_per_second = (self.step - window_step) / max(now - window_start, 1e-9)
                        self.elapsed_seconds += now - window_start
                        record = {
                            "step": self.step,
                            "loss": round(mean_loss, 6),
                            "lr": self.learning_rate(self.step - 1),
                            "steps_per_s": round(steps_per_second, 3),
                            "elapsed_s": round(self.elapsed_seconds, 1),
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        bar.set_postfix(loss=f"{mean_loss:.4f}", it_s=f"{steps_per_second:.2f}")
                        loss_sum.zero_()
                        count = 0
                        window_start, window_step = time.perf_counter(), self.step
                    if config.sample_every and self.sample_writer and self.step % config.sample_every == 0:
                        self.sample_writer(self.ema.shadow, self.step, self.run_dir / "samples")
                    if self.step % config.checkpoint_every == 0 and self.step < config.max_steps:
                        self.save()
        finally:
            bar.close()
        return self.save()

    # ----------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """The ``training`` metadata stored in the checkpoint (steps, settings, device, time)."""
        return {
            "steps": self.step,
            "batch_size": self.config.batch_size,
            "train_config": asdict(self.config),
            "device": str(self.device),
            "train_seconds": round(self.elapsed_seconds, 1),
            "torch": torch.__version__,
            **({"data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}),
        }

    def save(self) -> Path:
        """Write the EMA checkpoint and the exact resume state."""
        path = save_checkpoint(
            self.run_dir / "model.safetensors",
            self.ema.shadow,
            self.schedule,
            class_names=self.data.class_names,
            sample_shape=self.data.sample_shape,
            dataset=self.data.name,
            training=self.metadata(),
        )
        rng = {
            "cpu": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
            "noise": self.noise_generator.get_state(),
        }
        extra: dict[str, Any] = {}
        if isinstance(self.data, ImageData):
            rng["data_order"] = self.data._order
            extra["data_position"] = self.data._position
        save_training_state(
            self.run_dir,
            tensors={"model": self.model.state_dict(), "ema": self.ema.shadow.state_dict(), "rng": rng},
            optimizer=self.optimizer,
            info={
                "step": self.step,
                "ema_updates": self.ema.num_updates,
                "elapsed_seconds": self.elapsed_seconds,
                "train_config": asdict(self.config),
                **extra,
            },
        )
        logger.info("saved step %d to %s", self.step, path)
        return path

    def _truncate_log(self) -> None:
        """Drop log lines written after the state being resumed, so each step is logged once."""
        log_path = self.run_dir / "log.jsonl"
        if not log_path.is_file():
            return
        kept = [
            line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= self.step
        ]
        log_path.write_text("".join(line + "\n" for line in kept))

    def resume(self) -> None:
        """Restore the state written by :meth:`save` (model, EMA, optimiser, step, RNG, data order)."""
        tensors, optimizer_state, info = load_training_state(self.run_dir)
        try:
            self.model.load_state_dict(tensors["model"])
            self.ema.shadow.load_state_dict(tensors["ema"])
            self.optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(
                f"training state in {self.run_dir} does not match this model: {str(error).splitlines()[0]}"
            ) from None
        rng = tensors["rng"]
        torch.set_rng_state(rng["cpu"])
        self.data_generator.set_state(rng["data"])
        self.noise_generator.set_state(rng["noise"].to(self.noise_generator.get_state().device))
        if isinstance(self.data, ImageData) and "data_order" in rng:
            self.data._order = rng["data_order"]
            self.data._position = int(info.get("data_position", 0))
        self.step = int(info["step"])
        self.ema.num_updates = int(info["ema_updates"])
        self.elapsed_seconds = float(info.get("elapsed_seconds", 0.0))
        self._truncate_log()
        logger.info("resumed %s at step %d", self.run_dir, self.step)
