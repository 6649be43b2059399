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


def keep_torch_to_this_thread() -> None:
    """Run this thread's CPU torch operations on the thread alone: no OpenMP team of its own.

    Every thread that runs an operation large enough to go parallel gets its own team of OpenMP
    threads, and they stay. Once a process holds more OpenMP threads than cores, libgomp stops
    letting idle team threads spin between parallel regions, and every region pays to wake its
    team: measured on a 2-core CPU, the MNIST U-Net's forward of 2 rows took 29 ms on a second
    thread while another thread had a team, 8.6 ms when only its own thread had one. A process
    that drives torch from one thread (the engine's device thread, :mod:`worker.engine`) calls this
    on every other thread that touches torch (loading models, preparing jobs), and gives the
    device thread its threads with :func:`torch.set_num_threads` there.

    ``torch.set_num_threads`` sets the calling thread's OpenMP threads and the count threads
    made later start with; a thread that already ran torch keeps its own.
    """
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
