"""Training speed: images/s of our U-Net and of diffusers' UNet2DModel of the same size, side by
side in one run, and ``ddpm train``'s scaling from 1 to 2 ranks.

    python benchmarks/bench_train.py [--presets mnist,rgb32] [--batch 64] [--steps 6] [--repeats 3]
                                     [--compile] [--channels-last] [--threads N] [--scaling-steps 24]
                                     [--no-scaling | --no-compare]

Part 1, one process. Both networks are built from one :class:`~ddpm_core.models.UNetConfig`
(diffusers: the same channels per level, res blocks per level, attention levels, heads, groups,
scale-shift time conditioning, class embedding with a null label; the parameter counts are
printed) and trained by the same step: x_t from our schedule, MSE on the noise, backward,
gradient clipping, AdamW, in float32 on the CPU and bf16 autocast on CUDA. The models take
turns, ``--repeats`` times, each timing ``--steps`` steps after two warm-up steps; the table
shows the median images/s and the range. One more row times our model through
:class:`~ddpm_core.training.Trainer`, the loop ``ddpm train`` runs (data, EMA, metrics,
checkpoint; channels-last, as it trains on images), from its log. ``--compile`` adds
torch.compile rows (the first steps compile); ``--channels-last`` adds channels-last rows.

Part 2, ``ddpm train`` through torchrun on random 28-px images with the MNIST U-Net, global batch
``--batch``: 1 rank and 2 ranks (gloo on the CPU, one thread per rank, plus one process with
every core; NCCL on 2 GPUs when the machine has them), images/s from ``log.jsonl`` (the median
of the windows after the first). On a CPU the ranks share its cores: 2 ranks of one thread
beside 1 rank of one thread is the scaling when each rank has a core to itself, and only then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_core.data.datasets import ImageData
from ddpm_core.device import pick_device
from ddpm_core.models import UNet, UNetConfig
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    # the MNIST model ddpm train builds by default (0.72M parameters)
    "mnist": UNetConfig(
        image_size=28, in_channels=1, base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=1,
        attention_resolutions=(7,), num_heads=4, dropout=0.1, num_classes=10,
    ),
    # the default for folders of RGB images, at 32 px (1.74M parameters)
    "rgb32": UNetConfig(
        image_size=32, in_channels=3, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
        attention_resolutions=(8,), num_heads=4, dropout=0.1, num_classes=0,
    ),
}  # fmt: skip


def diffusers_twin(config: UNetConfig) -> nn.Module:
    """diffusers' ``UNet2DModel`` laid out as our U-Net of ``config``."""
    from diffusers import UNet2DModel

    levels = range(len(config.channel_mult))
    attends = [config.image_size // 2**level in config.attention_resolutions for level in levels]
    widths = [config.base_channels * mult for mult in config.channel_mult]
    attention_width = widths[attends.index(True)] if any(attends) else widths[-1]
    return UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        block_out_channels=tuple(widths),
        layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if attend else "DownBlock2D" for attend in attends),
        up_block_types=tuple("AttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(attends)),
        attention_head_dim=attention_width // config.num_heads,
        norm_num_groups=config.norm_groups,
        resnet_time_scale_shift="scale_shift",
        dropout=config.dropout,
        num_class_embeds=config.num_classes + 1 if config.num_classes else None,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """One model trained by the shared step on a fixed random batch."""

    def __init__(self, name, model, forward, config, batch, device, compiled=False, channels_last=False):
        self.name, self.device, self.batch = name, device, batch
        self.model = model.to(device).train()
        memory = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=memory)
        self.forward = torch.compile(forward) if compiled else forward
        self.parameters = sum(p.numel() for p in model.parameters())
        self.schedule = NoiseSchedule.linear(1000)
        generator = torch.Generator().manual_seed(0)
        self.clean = (torch.rand(batch, *config.sample_shape, generator=generator) * 2 - 1).to(device)
        self.clean = self.clean.contiguous(memory_format=memory)
        classes = config.num_classes + 1 if config.num_classes else 1
        self.labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
        self.conditional = bool(config.num_classes)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self) -> None:
        timesteps = torch.randint(0, 1000, (self.batch,), device=self.device)
        noise = torch.randn_like(self.clean)
        noisy = self.schedule.add_noise(self.clean, noise, timesteps)
        labels = self.labels if self.conditional else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            prediction = self.forward(self.model, noisy, timesteps, labels)
        loss = F.mse_loss(prediction.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()

    def images_per_second(self, steps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            self.step()
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return steps * self.batch / (time.perf_counter() - started)


def ours_forward(model, noisy, timesteps, labels):
    return model(noisy, timesteps, labels)


def diffusers_forward(model, noisy, timesteps, labels):
    return model(noisy, timesteps, class_labels=labels).sample


def through_trainer(config: UNetConfig, batch: int, steps: int, device: torch.device) -> Callable[[], float]:
    """A timing of ``steps`` steps of :class:`Trainer` (after ``steps`` warm-up steps), from its log."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * batch, *config.sample_shape), dtype=np.uint8)
    labels = rng.integers(0, max(config.num_classes, 1), 4 * batch)
    names = [str(index) for index in range(config.num_classes)]
    data = ImageData("random", images, labels, names)

    def run() -> float:
        train = TrainConfig(max_steps=2 * steps, batch_size=batch, log_every=steps, checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as run_dir:
            Trainer(UNet(config), NoiseSchedule.linear(1000), data, train, run_dir, device=str(device),
                    progress=False).train()  # fmt: skip
            lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["images_per_s"]

    return run


def part_one(args, device: torch.device) -> list[list[str]]:
    rows = []
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    variants = [(False, False)] + [(True, False)] * args.compile + [(False, True)] * args.channels_last
    for preset in args.presets.split(","):
        config = PRESETS[preset]
        runs: dict[str, tuple[Callable[[], float], int, str]] = {}  # label -> timing, parameters, variant
        for compiled, channels_last in variants:
            variant = (", compiled" if compiled else "") + (", channels-last" if channels_last else "")
            for family, model, forward in (
                ("ours", UNet(config), ours_forward),
                ("diffusers UNet2DModel", diffusers_twin(config), diffusers_forward),
            ):
                runner = Timed(family, model, forward, config, args.batch, device, compiled, channels_last)
                runs[family + variant] = (lambda r=runner: r.images_per_second(args.steps), runner.parameters, variant)
        trainer = through_trainer(config, args.batch, args.steps, device)
        runs["ours via Trainer (+EMA, data, log)"] = (trainer, runs["ours"][1], "")
        results: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeats):  # the models take turns: a busy machine slows them alike
            for label, (measure, _, _) in runs.items():
                results[label].append(measure())
        for label, (_, parameters, variant) in runs.items():
            median = statistics.median(results[label])
            versus = (
                ""
                if label.startswith("diffusers")
                else f"{median / statistics.median(results['diffusers UNet2DModel' + variant]):.2f}x"
            )
            rows.append([preset, label, f"{parameters / 1e6:.2f}", precision, str(args.batch), f"{median:.1f}",
                         f"{min(results[label]):.1f}-{max(results[label]):.1f}", versus])  # fmt: skip
    return rows


def train_command(out: Path, data: Path, batch: int, steps: int) -> list[str]:
    return [
        "train", "--dataset", f"npy:{data / 'images.npy'},{data / 'labels.npy'}", "--out", str(out),
        "--base-channels", "16", "--channel-mult", "1,2,4", "--num-res-blocks", "1", "--batch-size", str(batch),
        "--max-steps", str(steps), "--log-every", str(max(steps // 4, 1)), "--checkpoint-every", str(10**9),
        "--no-progress",
    ]  # fmt: skip


def scaling_run(label: str, command: list[str], threads: int | None, out: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        return [label, "failed: " + (result.stderr.strip().splitlines() or ["?"])[-1], ""]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [record["images_per_s"] for record in records[1:]] or [records[-1]["images_per_s"]]
    return [label, f"{statistics.median(rates):.1f}", f"{min(rates):.1f}-{max(rates):.1f}"]


def part_two(args, device: torch.device) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        rng = np.random.default_rng(0)
        (root / "data").mkdir()
        np.save(root / "data" / "images.npy", rng.integers(0, 256, (1024, 28, 28), dtype=np.uint8))
        np.save(root / "data" / "labels.npy", rng.integers(0, 10, 1024))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
        plain = [sys.executable, "-m", "ddpm_core"]
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        if gpus:
            cases = [("1 rank, 1 GPU", torchrun + ["1", "-m", "ddpm_core"], None)]
            if gpus >= 2:
                cases.append(("2 ranks, 2 GPUs (NCCL)", torchrun + ["2", "-m", "ddpm_core"], None))
        else:
            cores = os.cpu_count() or 1
            cases = [
                (f"1 process, {cores} threads", plain, cores),
                ("1 rank, 1 thread (torchrun)", torchrun + ["1", "-m", "ddpm_core"], 1),
                ("2 ranks x 1 thread (gloo)", torchrun + ["2", "-m", "ddpm_core"], 1),
            ]
        for index, (label, launcher, threads) in enumerate(cases):
            out = root / f"run{index}"
            extra = ["--device", "cpu"] if not gpus else []
            command = launcher + train_command(out, root / "data", args.batch, args.scaling_steps) + extra
            rows.append(scaling_run(label, command, threads, out))
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="mnist,rgb32", help=f"comma-separated, of {', '.join(PRESETS)}")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per repeat (default 6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--channels-last", action="store_true", help="add channels-last rows")
    parser.add_argument("--scaling-steps", type=int, default=24, help="steps of each ddpm train run (default 24)")
    parser.add_argument("--no-scaling", action="store_true", help="skip part 2")
    parser.add_argument("--no-compare", action="store_true", help="skip part 1")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, help="torch threads of part 1 (default: torch's; 1 is steadier on a busy machine)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, batch {args.batch}")
    with contextlib.suppress(ImportError):
        import diffusers

        print(f"diffusers {diffusers.__version__}")
    if not args.no_compare:
        print()
        print_table(
            ["preset", "model", "params (M)", "precision", "batch", "images/s", "range", "vs diffusers"],
            part_one(args, device),
        )
    if not args.no_scaling:
        print(f"\nddpm train, MNIST U-Net, global batch {args.batch}, {args.scaling_steps} steps:")
        print_table(["ranks", "images/s", "range"], part_two(args, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
