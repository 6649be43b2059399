"""Ahead-of-time compiled forwards: one AOTInductor package per batch size (bucket).

A package is eps_theta(x, t, y) for one model's exact weights at one static batch size,
exported with ``torch.export`` and compiled by AOTInductor into a shared library plus its
constants (``.pt2``). Building one takes as long as compiling the bucket with
``torch.compile`` (tens of seconds on a small CPU), but it happens in a process of its own
(``python -m ddpm_core.aot``), so a serving process never traces, compiles or holds the GIL
for it; loading a built package takes milliseconds. Packages are named by the weights' SHA-256,
the bucket, the device type, the torch version and the machine (:func:`package_name`), so a
cache directory of them is valid across restarts and never serves other weights.

The package computes what the eager model computes, in float32, up to float noise; a
:class:`~ddpm_core.compiled.BucketedForward` pads a batch to the bucket before calling it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ddpm_core.atomic import atomic_path
from ddpm_core.compiled import dummy_inputs

logger = logging.getLogger(__name__)

CompiledForward = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
EXIT_WEIGHTS_CHANGED = 3  # the checkpoint's weights are no longer the ones asked for


def package_name(weights_sha256: str, bucket: int, device_type: str) -> str:
    """The file name of a package: unique per weights, bucket, device type, torch and machine."""
    version = torch.__version__.replace("+", "_")
    return f"{weights_sha256[:32]}-b{bucket}-{device_type}-torch{version}-{platform.machine()}.pt2"


def build_package(model: nn.Module, sample_shape: Sequence[int], bucket: int, path: str | Path) -> float:
    """Export and compile ``model`` (eval mode, on its device) for batches of ``bucket`` rows
    into the package ``path`` (written atomically); the seconds it took."""
    started = time.perf_counter()
    device = next(model.parameters()).device
    inputs = dummy_inputs(bucket, sample_shape, int(getattr(model, "num_classes", 0)), device)
    with torch.no_grad():
        exported = torch.export.export(model, inputs)
        with atomic_path(path) as temporary:
            built = temporary.with_suffix(".pt2")  # AOTInductor wants the .pt2 suffix
            try:
                torch._inductor.aoti_compile_and_package(
                    exported, package_path=str(built), inductor_configs={"freezing": True}
                )
                built.rename(temporary)
            finally:
                built.unlink(missing_ok=True)
    return time.perf_counter() - started


def load_package(path: str | Path, device: torch.device | str) -> CompiledForward:
    """A built package as a callable ``(x, t, y) -> eps`` (y None for unconditional models)."""
    index = torch.device(device).index
    loaded = torch._inductor.aoti_load_package(str(path), device_index=-1 if index is None else index)

    def forward(sample: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return loaded(sample, timesteps, labels)

    return forward


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies (Linux): a builder never outlives its worker."""
    name = ctypes.util.find_library("c")
    if name and platform.system() == "Linux":
        ctypes.CDLL(name, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ddpm_core.aot --checkpoint FILE --weights-sha256 H --bucket N --out FILE``."""
    parser = argparse.ArgumentParser(description="Build one AOTInductor package of a checkpoint's forward.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--weights-sha256", required=True, help="refuse (exit 3) when the file's weights differ")
    parser.add_argument("--bucket", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    from ddpm_core.checkpoint import load_checkpoint

    loaded = load_checkpoint(args.checkpoint, device=args.device)
    if loaded.weights_sha256 != args.weights_sha256:
        logger.error("%s no longer holds weights %s", args.checkpoint.name, args.weights_sha256[:12])
        return EXIT_WEIGHTS_CHANGED
    seconds = build_package(loaded.model.eval(), loaded.sample_shape, args.bucket, args.out)
    logger.info("built the bucket-%d package of %s in %.1f s", args.bucket, args.checkpoint.name, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
