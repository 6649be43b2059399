"""Training: the loop, EMA weights and exact resume state."""

from ddpm_core.training.ema import EMA
from ddpm_core.training.trainer import TrainConfig, Trainer

__all__ = ["EMA", "TrainConfig", "Trainer"]
