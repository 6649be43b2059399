"""Time sampling: ms per step and total seconds for one batch, DDPM (all T steps) and DDIM.

    python benchmarks/bench_sampling.py [--checkpoint checkpoints/mnist.safetensors] [--batch 16]

Each row is one batch of ``--batch`` samples, without and with classifier-free guidance (which
doubles the forward batch; the guided rows use ``--guidance``, by default the checkpoint's default
guidance, and are left out when that is 0). DDPM over all T steps is timed on its first
``--ddpm-timed-steps`` steps and extrapolated (every step costs the same forward pass); the table
says which rows were extrapolated. One warm-up step precedes each timing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.errors import CheckpointError, GenerationCancelled
from ddpm_core.pipeline import generate
from ddpm_core.samplers import make_sampler

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "mnist.safetensors"


def time_steps(checkpoint, sampler, batch: int, guidance: float, limit: int) -> float:
    """Seconds for the first ``limit`` steps of one batch (the whole run when limit >= its steps)."""
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > limit

    labels = [index % checkpoint.num_classes for index in range(batch)] if checkpoint.num_classes else None
    started = time.perf_counter()
    with contextlib.suppress(GenerationCancelled):
        generate(
            checkpoint.model,
            sampler,
            sample_shape=checkpoint.sample_shape,
            num_samples=batch,
            class_labels=labels,
            guidance_scale=guidance,
            seed=0,
            should_stop=should_stop,
        )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--guidance", type=float, help="scale of the guided rows (default: the checkpoint's; 0: unguided rows only)"
    )
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--ddpm-timed-steps", type=int, default=20, help="DDPM steps actually timed (default 20)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.checkpoint, device="cpu")
    except CheckpointError as error:
        print(f"bench_sampling: error: {error}", file=sys.stderr)
        return 2
    guidance = args.guidance if args.guidance is not None else checkpoint.defaults.default_guidance
    if guidance < 0:
        parser.error("--guidance must be >= 0")
    guided = sorted({0.0, guidance}) if checkpoint.num_classes else [0.0]  # a scale of 0 adds no row
    parameters = sum(p.numel() for p in checkpoint.model.parameters())
    print(f"checkpoint {args.checkpoint} ({checkpoint.model_kind}, {parameters / 1e6:.2f}M parameters)")
    print(f"device cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    header = f"{'sampler':<8} {'steps':>5} {'guidance':>8} {'forward batch':>13} {'ms/step':>9} {'total s':>9}  timed"
    print(header)
    print("-" * len(header))
    for name, steps, timed in (
        ("ddpm", None, args.ddpm_timed_steps),
        ("ddim", args.ddim_steps, args.ddim_steps),
    ):
        sampler = make_sampler(name, checkpoint.schedule, steps)
        total_steps = len(sampler.timesteps)
        timed = min(timed, total_steps)
        for scale in guided:
            time_steps(checkpoint, sampler, args.batch, scale, 1)  # warm-up
            seconds = time_steps(checkpoint, sampler, args.batch, scale, timed)
            per_step = seconds / timed
            note = "all" if timed == total_steps else f"{timed} of {total_steps}, extrapolated"
            forward = args.batch * (2 if scale > 0 else 1)
            print(
                f"{name:<8} {total_steps:>5} {scale:>8.2f} {forward:>13} {1000 * per_step:>9.1f} "
                f"{per_step * total_steps:>9.1f}  {note}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
