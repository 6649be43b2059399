"""Choosing the torch device: one rule for the trainer, the CLI and any other caller."""

from __future__ import annotations

import torch


def pick_device(name: str | None = "auto") -> torch.device:
    """The device called ``name``; ``"auto"`` (or None, or "") is CUDA when available, else the CPU.

    Raises:
        ValueError: ``name`` is not a device torch knows, or names a CUDA device this machine
            does not have.
    """
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return device
