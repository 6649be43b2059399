"""Training: the loop, EMA weights, exact resume state, data-parallel ranks and metrics."""

from ddpm_core.training.ema import EMA
from ddpm_core.training.trainer import RunOptions, TrainConfig, Trainer

__all__ = ["EMA", "RunOptions", "TrainConfig", "Trainer"]
