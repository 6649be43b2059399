"""The training loop: epsilon prediction (Ho et al. 2020, Algorithm 1) with EMA and resume,
on one process or data-parallel over the ranks torchrun starts.

Loss: || eps - eps_theta(sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, t, y) ||^2     (Ho eq. 14)
Labels are replaced by the null label with probability ``label_dropout`` so the same model
learns the unconditional score needed for classifier-free guidance.

Every random draw of a step is a function of (seed, step) and the data's position
(:mod:`ddpm_core.training.batches`): the global batch, its timesteps, noise and label dropout
are drawn whole and each rank takes its share, so 1 or W ranks, with or without gradient
accumulation, compute the same step up to float rounding, and a run resumes exactly on any
number of ranks. Dropout inside the model is seeded per (seed, step, rank): exact on resume at
the same scale, equal in distribution across scales.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ddpm_core.checkpoint import save_checkpoint
from ddpm_core.data.datasets import ImageData, TrainingData
from ddpm_core.data.fingerprint import data_fingerprint
from ddpm_core.device import pick_device
from ddpm_core.errors import CheckpointError, DatasetError
from ddpm_core.history import HISTORY_KEY, TrainingRun, history_metadata, training_history
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.training.batches import DROPOUT, NOISE, Shard, ShardedBatches, make_loader, mix_seed
from ddpm_core.training.distributed import DistContext, check_batch_split, collective_errors
from ddpm_core.training.ema import EMA
from ddpm_core.training.metrics import TrainingMetrics, truncate_log
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


@dataclass(frozen=True)
class RunOptions:
    """How a run executes, not what it learns: free to change when a run is resumed.

    Attributes:
        accumulate: micro-batches per optimiser step on each rank; the global batch is split
            over ranks x accumulate, so a small GPU still reaches the global batch.
        compile: ``torch.compile`` the model's training forward (and with it the backward).
        data_workers: processes preparing batches ahead of the device (None: 2 on CUDA, 0 on CPU).
        tensorboard: also log to TensorBoard (``RUN_DIR/tensorboard``; needs ``tensorboard``).
    """

    accumulate: int = 1
    compile: bool = False
    data_workers: int | None = None
    tensorboard: bool = False


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
    """Trains ``model`` on ``data`` under ``schedule``, writing to ``run_dir`` (rank 0 only):

    - ``model.safetensors``: EMA weights and metadata, at every checkpoint and at the end;
    - ``train_state.safetensors`` / ``train_state.json``: everything needed to resume exactly;
    - ``log.jsonl``: one line per ``log_every`` steps (:class:`~ddpm_core.training.metrics.MetricsRecord`);
    - ``samples/step_NNNNNNN.png`` from ``sample_writer`` every ``sample_every`` steps.

    The checkpoint's ``training`` metadata records the weights' history (:mod:`ddpm_core.history`):
    ``history`` holds the runs before this one (e.g. those of the checkpoint ``--init-from``
    starts from, whose file ``source`` names), :meth:`resume` the run's own earlier sessions.

    ``config.batch_size`` is the global batch. With ``context`` of W ranks (see
    :func:`~ddpm_core.training.distributed.init_distributed`) the model is wrapped in
    ``DistributedDataParallel`` and each rank trains on its 1/W of every batch; the weights, EMA
    and optimiser stay identical on every rank. Without it the run is one process on ``device``.
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
        options: RunOptions | None = None,
        context: DistContext | None = None,
        history: Sequence[TrainingRun] = (),
        source: str = "",
    ) -> None:
        check_model_fits_data(model, data)
        self.history = list(history)  # the sessions before this one, oldest first
        # this session: how it started, the run's step and training seconds when it did
        self.session_start, self.source = ("weights" if source else "scratch"), source
        self.session_step, self.session_seconds = 0, 0.0
        self.options = options or RunOptions()
        self.context = context or DistContext(device=pick_device(device))
        check_batch_split(config.batch_size, self.context.world_size, self.options.accumulate)
        self.config = config
        self.schedule = schedule
        self.data = data
        # the data's fingerprint, stored with the model: a classifier trained on other data is
        # never paired to it (ddpm_core.evaluation.pairing); None for point data sets
        self.data_fingerprint = (
            data_fingerprint(data.images, data.labels, data.class_names) if isinstance(data, ImageData) else None
        )
        self.run_dir = Path(run_dir)
        self.device = self.context.device
        self.on_cuda = self.device.type == "cuda"
        # channels-last speeds up the convolutions of cuDNN (tensor cores) and of oneDNN on the CPU:
        # benchmarks/bench_train.py measured the U-Net's step 3-12% faster with it on a 2-core CPU
        self.channels_last = isinstance(data, ImageData)
        self.sample_writer = sample_writer
        self.progress = progress
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp: DistributedDataParallel | None = None
        if self.context.enabled:  # broadcasts rank 0's weights: every rank starts from the same ones
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.on_cuda else None)
        forward = self.ddp or self.model
        self.forward = torch.compile(forward) if self.options.compile else forward
        self.ema = EMA(self.model, config.ema_decay)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.step = 0
        self.samples_seen = 0  # the data's position: samples drawn since the run began, over all ranks
        self.noise_generator = torch.Generator(device=self.device)
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

    def draw_noise(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's share of the step's timesteps (b,), noise (b, ...) and label-dropout mask (b,),
        drawn for the whole global batch from (seed, step) so the share does not depend on the ranks."""
        generator = self.noise_generator.manual_seed(mix_seed(self.config.seed, NOISE, self.step))
        batch, device = self.config.batch_size, self.device
        timesteps = torch.randint(0, self.schedule.num_train_timesteps, (batch,), device=device, generator=generator)
        noise = torch.randn((batch, *self.data.sample_shape), device=device, generator=generator)
        drop = torch.rand(batch, device=device, generator=generator) < self.config.label_dropout
        part = self.context.shard(batch)
        return timesteps[part], noise[part], drop[part]

    def loss(
        self,
        clean: torch.Tensor,
        labels: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        drop: torch.Tensor,
    ) -> torch.Tensor:
        """The mean loss over a batch: clean samples (B, ...), labels (B,), timesteps (B,), noise of
        the samples' shape and the label-dropout mask (B,) bool; a scalar tensor."""
        noisy = self.schedule.add_noise(clean, noise, timesteps)
        class_labels = torch.where(drop, torch.full_like(labels, self.null_label), labels) if self.null_label else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.on_cuda):
            prediction = self.forward(noisy, timesteps, class_labels)
        loss_fn = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        return loss_fn(prediction.float(), noise)

    def train_step(self, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on this rank's ``shard`` of the global batch, in ``accumulate`` micro-batches.

        Returns the loss and the gradient norm before clipping (scalar tensors, not synced to the host).
        """
        torch.manual_seed(mix_seed(self.config.seed, DROPOUT, self.step, self.context.rank))
        clean = shard.clean.to(self.device, non_blocking=True)
        if self.channels_last and clean.ndim == 4:
            clean = clean.contiguous(memory_format=torch.channels_last)
        labels = shard.labels.to(self.device, non_blocking=True)
        timesteps, noise, drop = self.draw_noise()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        accumulate = self.options.accumulate
        size = len(clean) // accumulate
        total = torch.zeros((), device=self.device)
        for index in range(accumulate):
            part = slice(index * size, (index + 1) * size)
            last = index == accumulate - 1
            # gradients are averaged over the ranks once per step, after the last micro-batch
            syncing = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with syncing:
                loss = self.loss(clean[part], labels[part], timesteps[part], noise[part], drop[part]) / accumulate
                loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip or math.inf)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        self.samples_seen += self.config.batch_size
        return total, grad_norm.detach()

    # ----------------------------------------------------------------- the loop
    def train(self) -> Path:
        """Train until ``max_steps``; returns the path of the final checkpoint (written by rank 0)."""
        config, context = self.config, self.context
        if context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=1))
        self.model.train()
        batches = ShardedBatches(
            self.data,
            global_batch=config.batch_size,
            seed=config.seed,
            start_position=self.samples_seen,
            steps=config.max_steps - self.step,
            rank=context.rank,
            world_size=context.world_size,
        )
        metrics = TrainingMetrics(
            self.run_dir,
            context,
            start_step=self.step,
            max_steps=config.max_steps,
            global_batch=config.batch_size,
            elapsed_s=self.elapsed_seconds,
            progress=self.progress,
            tensorboard=self.options.tensorboard,
        )
        with collective_errors(context), metrics:
            for shard in make_loader(batches, self.device, self.options.data_workers):
                metrics.add(*self.train_step(shard))
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    metrics.record(self.step, self.learning_rate(self.step - 1))
                    self.elapsed_seconds = metrics.elapsed_s
                sampling = config.sample_every and self.step % config.sample_every == 0
                if sampling and self.sample_writer and context.is_main:
                    self.sample_writer(self.ema.shadow, self.step, self.run_dir / "samples")
                if self.step % config.checkpoint_every == 0 and self.step < config.max_steps:
                    self.save()
            path = self.save()
            context.barrier()  # no rank reports success before the final checkpoint exists
        return path

    # ----------------------------------------------------------------- persistence
    def runs(self) -> list[TrainingRun]:
        """The weights' whole history: the earlier sessions, then this one up to now (when it trained)."""
        config = self.config
        session = TrainingRun(
            steps=self.step - self.session_step,
            start=self.session_start,
            source=self.source,
            at_step=self.session_step,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            warmup_steps=config.warmup_steps,
            lr_schedule=config.lr_schedule,
            max_steps=config.max_steps,
            seconds=round(self.elapsed_seconds - self.session_seconds, 1),
        )
        return self.history + ([session] if session.steps else [])

    def metadata(self) -> dict[str, Any]:
        """The ``training`` metadata stored in the checkpoint (steps, settings, device, time, history)."""
        return {
            "steps": self.step,
            "batch_size": self.config.batch_size,
            "train_config": asdict(self.config),
            "device": str(self.device),
            "world_size": self.context.world_size,
            "train_seconds": round(self.elapsed_seconds, 1),
            "torch": torch.__version__,
            **({"data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}),
            HISTORY_KEY: history_metadata(self.runs()),
        }

    def save(self) -> Path:
        """Write the EMA checkpoint and the exact resume state (rank 0; the path on every rank)."""
        path = self.run_dir / "model.safetensors"
        if not self.context.is_main:
            return path
        save_checkpoint(
            path,
            self.ema.shadow,
            self.schedule,
            class_names=self.data.class_names,
            sample_shape=self.data.sample_shape,
            dataset=self.data.name,
            training=self.metadata(),
        )
        save_training_state(
            self.run_dir,
            tensors={"model": self.model.state_dict(), "ema": self.ema.shadow.state_dict()},
            optimizer=self.optimizer,
            info={
                "step": self.step,
                "samples_seen": self.samples_seen,
                "ema_updates": self.ema.num_updates,
                "elapsed_seconds": self.elapsed_seconds,
                "world_size": self.context.world_size,
                "train_config": asdict(self.config),
                HISTORY_KEY: history_metadata(self.runs()),
            },
        )
        logger.info("saved step %d to %s", self.step, path)
        return path

    def resume(self) -> None:
        """Restore the state written by :meth:`save` (model, EMA, optimiser, step, data position).

        Rank 0 reads the run directory and hands the state to the other ranks, so they need no
        copy of it (machines without a shared file system); the state may come from a run on
        any number of ranks.
        """
        with collective_errors(self.context):
            tensors, optimizer_state, info = self.context.from_main(lambda: load_training_state(self.run_dir))
        try:
            self.model.load_state_dict(tensors["model"])
            self.ema.shadow.load_state_dict(tensors["ema"])
            self.optimizer.load_state_dict(optimizer_state)
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(
                f"training state in {self.run_dir} does not match this model: {str(error).splitlines()[0]}"
            ) from None
        self.step = int(info["step"])
        if "samples_seen" in info:
            self.samples_seen = int(info["samples_seen"])
        else:  # a state written before the data position was kept: same count, a new order
            self.samples_seen = self.step * int(info["train_config"]["batch_size"])
            logger.warning("the state in %s predates position-seeded batches: the data order restarts", self.run_dir)
        self.ema.num_updates = int(info["ema_updates"])
        self.elapsed_seconds = float(info.get("elapsed_seconds", 0.0))
        # the run's sessions so far (a state from before histories were kept: one run of its steps)
        self.history = training_history(
            {"steps": self.step, **({HISTORY_KEY: info[HISTORY_KEY]} if HISTORY_KEY in info else {})}
        )
        self.session_start, self.source = "resume", ""
        self.session_step, self.session_seconds = self.step, self.elapsed_seconds
        if self.context.is_main:
            truncate_log(self.run_dir, self.step)
        logger.info("resumed %s at step %d (%d samples seen)", self.run_dir, self.step, self.samples_seen)
