"""Training: the loop, EMA weights and exact resume state."""

from ddpm_core.training.ema import EMA
from ddpm_core.training.trainer import TrainConfig, Trainer, pick_device

__all__ = ["EMA", "TrainConfig", "Trainer", "pick_device"]
