"""A small MLP denoiser for low-dimensional points (the 2D checkerboard toy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_core.config import StoredConfig
from ddpm_core.models.unet import timestep_embedding

# Sanity bounds: a checkpoint's config is untrusted, and building takes time linear in the depth.
MAX_LAYERS = 64
MAX_FOURIER_FEATURES = 32


@dataclass(frozen=True)
class MLPConfig(StoredConfig):
    """Everything needed to rebuild an :class:`MLPDenoiser`; stored in checkpoints as JSON."""

    data_dim: int = 2
    hidden_dim: int = 256
    num_layers: int = 4
    time_embed_dim: int = 64
    num_classes: int = 0
    fourier_features: int = 6

    def __post_init__(self) -> None:
        if min(self.data_dim, self.hidden_dim, self.num_layers, self.time_embed_dim) < 1:
            raise ValueError("data_dim, hidden_dim, num_layers and time_embed_dim must be positive")
        if self.num_classes < 0 or self.fourier_features < 0:
            raise ValueError("num_classes and fourier_features must be >= 0")
        if self.num_layers > MAX_LAYERS or self.fourier_features > MAX_FOURIER_FEATURES:
            raise ValueError(f"at most {MAX_LAYERS} layers and {MAX_FOURIER_FEATURES} fourier_features")

    @property
    def sample_shape(self) -> tuple[int]:
        """The shape of one sample, (D,)."""
        return (self.data_dim,)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t, y) for points: (B, D), (B,), (B,) -> (B, D).

    The input is lifted with sines and cosines at ``fourier_features`` octaves (pi, 2 pi, 4 pi,
    ...), which lets a small MLP draw sharp edges; then residual SiLU layers, with the time
    (and class) embedding added to every layer's input.
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        self.time_embed = nn.Sequential(nn.Linear(config.time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_embed = nn.Embedding(config.num_classes + 1, hidden) if config.num_classes else None
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(config.fourier_features, dtype=torch.float32), persistent=False
        )
        self.input = nn.Linear(config.data_dim * (1 + 2 * config.fourier_features), hidden)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(config.num_layers)
        )
        self.output = nn.Linear(hidden, config.data_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 for an unconditional model."""
        return self.config.num_classes

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise: x_t (B, D), integer timesteps (B,) or a scalar, labels (B,) or None -> (B, D)."""
        batch = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        embedding = self.time_embed(timestep_embedding(timestep, self.config.time_embed_dim).to(sample.dtype))
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.config.num_classes, device=sample.device, dtype=torch.long)
            embedding = embedding + self.class_embed(class_labels)
        angles = (sample[:, :, None] * self.frequencies).flatten(1)  # (B, D * F)
        h = self.input(torch.cat([sample, torch.sin(angles), torch.cos(angles)], dim=1))
        for layer in self.layers:
            h = h + layer(F.silu(h + embedding))
        return self.output(h)
