"""Exponential moving average of a model's weights, used for sampling."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow``, a copy of ``model`` whose weights follow
    shadow <- decay * shadow + (1 - decay) * weights after each optimiser step.

    The effective decay is warmed up as min(decay, (1 + n) / (10 + n)) over the first updates,
    so early weights do not linger.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError("EMA decay must be in [0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (warmed up over the first updates)."""
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights towards ``model``'s; copy its buffers."""
        decay = self.current_decay()
        shadow_params = [p for p in self.shadow.parameters()]
        model_params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow_params, model_params, 1.0 - decay)
        for shadow_buffer, buffer in zip(self.shadow.buffers(), model.buffers(), strict=True):
            shadow_buffer.copy_(buffer)
        self.num_updates += 1
