"""``ddpm sample`` running (its options: :mod:`ddpm_core.cli.sample`):
draw samples from a checkpoint into PNG, GIF and NPY files."""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from tqdm import tqdm

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.device import pick_device
from ddpm_core.errors import UsageError
from ddpm_core.pipeline import StepInfo, generate
from ddpm_core.render import FrameRecorder, ScatterRecorder, save_gif, save_grid, save_scatter
from ddpm_core.sampler_specs import DDIM, sampler_spec
from ddpm_core.samplers import make_sampler

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Run ``ddpm sample`` with parsed ``args``; returns the exit status."""
    if not (args.png or args.gif or args.npy):
        raise UsageError("nothing to write: give --png, --gif and/or --npy")
    if args.n < 1:
        raise UsageError("--n must be at least 1")
    checkpoint = load_checkpoint(args.checkpoint, device=pick_device(args.device))
    if args.all_classes and checkpoint.num_classes == 0:
        raise UsageError(f"{args.checkpoint} is an unconditional model: --all-classes is not allowed")
    if args.digit is not None:
        if checkpoint.num_classes == 0:
            raise UsageError(f"{args.checkpoint} is an unconditional model: --digit is not allowed")
        if not 0 <= args.digit < checkpoint.num_classes:
            raise UsageError(
                f"--digit {args.digit} is out of range: this model has classes 0 to {checkpoint.num_classes - 1}"
            )
    label = args.digit
    if args.class_label is not None:
        label = checkpoint.class_index(args.class_label)
        logger.info("drawing class %d (%s)", label, checkpoint.class_names[label])
    guidance = args.guidance if args.guidance is not None else checkpoint.defaults.default_guidance
    if guidance < 0:
        raise UsageError("--guidance must be >= 0")
    if args.eta and args.sampler != DDIM.name:
        raise UsageError(f"--eta is for the {DDIM.name} sampler only")
    options = {"eta": args.eta} if args.sampler == DDIM.name else {}
    steps = args.steps
    if steps is None:
        steps = sampler_spec(args.sampler).resolve_steps(None, checkpoint.schedule.num_train_timesteps)
    sampler = make_sampler(args.sampler, checkpoint.schedule, steps, **options)
    is_points = checkpoint.sample_shape == (2,)
    columns = args.n if args.all_classes else None  # --all-classes: one grid row per class
    recorder = None
    if args.gif:
        total = len(sampler.timesteps)
        recorder = ScatterRecorder(total) if is_points else FrameRecorder(total, columns=columns)
    labels = [label] * args.n if label is not None else None
    if args.all_classes:
        labels = [index for index in range(checkpoint.num_classes) for _ in range(args.n)]
    started = time.perf_counter()
    disable = True if args.no_progress else None  # None: tqdm shows a bar on a terminal only
    with tqdm(total=len(sampler.timesteps), unit="step", desc="sample", disable=disable) as bar:

        def after_step(info: StepInfo) -> None:
            if recorder is not None:
                recorder(info)
            bar.update(1)

        samples = generate(
            checkpoint.model,
            sampler,
            sample_shape=checkpoint.sample_shape,
            num_samples=len(labels) if labels else args.n,
            class_labels=labels,
            guidance_scale=guidance,
            seed=args.seed,
            callback=after_step,
        )
    seconds = time.perf_counter() - started
    logger.info(
        "sampled %d in %.1f s (%d steps, %.1f ms/step)",
        len(samples),
        seconds,
        len(sampler.timesteps),
        1000 * seconds / len(sampler.timesteps),
    )
    if args.png:
        if is_points:
            save_scatter(samples, args.png)
        else:
            save_grid(samples, args.png, columns=columns)
    if args.gif:
        save_gif(recorder.frames, args.gif)
    if args.npy:
        args.npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.npy, samples.float().cpu().numpy().astype(np.float32))
    return 0
