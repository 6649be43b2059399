"""Denoising networks and the registry that rebuilds them from a stored config."""

from __future__ import annotations

from typing import Any

from torch import nn

from ddpm_core.models.mlp import MLPConfig, MLPDenoiser
from ddpm_core.models.unet import UNet, UNetConfig, default_attention_resolutions

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "mlp": (MLPConfig, MLPDenoiser),
}


def model_kind(model: nn.Module) -> str:
    """The registry name of ``model``'s class."""
    for kind, (_, model_class) in MODEL_KINDS.items():
        if isinstance(model, model_class):
            return kind
    raise ValueError(f"{type(model).__name__} is not a known denoiser")


def build_model(kind: str, config: dict[str, Any] | UNetConfig | MLPConfig) -> nn.Module:
    """Build a denoiser of ``kind`` ('unet' or 'mlp') from its config or config dict."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    config_class, model_class = MODEL_KINDS[kind]
    if isinstance(config, dict):
        config = config_class.from_dict(config)
    if not isinstance(config, config_class):
        raise ValueError(f"a {kind} model needs a {config_class.__name__}")
    return model_class(config)


__all__ = [
    "MLPConfig",
    "MLPDenoiser",
    "UNet",
    "UNetConfig",
    "MODEL_KINDS",
    "build_model",
    "default_attention_resolutions",
    "model_kind",
]
