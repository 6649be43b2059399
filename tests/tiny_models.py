"""A tiny class-conditional U-Net on 8x8 images for fast engine, batching and compile tests."""

from __future__ import annotations

import torch

from ddpm_core.models import UNet, UNetConfig
from ddpm_core.schedule import NoiseSchedule

SHAPE = (1, 8, 8)
SCHEDULE = NoiseSchedule.linear(50)
TINY = UNetConfig(
    image_size=8,
    in_channels=1,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    num_heads=2,
    dropout=0.0,
    num_classes=3,
    norm_groups=4,
)
# well below 1/255 in [0, 1] pixel units (samples live in [-1, 1]: half their difference)
PIXEL_TOLERANCE = 1e-2 / 255


def perturbed(config: UNetConfig = TINY) -> UNet:
    """An untrained U-Net whose outputs are not all zero (its output layers start at zero)."""
    torch.manual_seed(0)
    net = UNet(config).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net
