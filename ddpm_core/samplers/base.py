"""What every sampler shares: timestep spacing, the step as one table of coefficients, and the
vectorised step that applies a table row to each sample.

Every step of every sampler here is linear in a few tensors once the model's data prediction
is known. With K history slots h_1..h_K (per-sample tensors a multistep sampler carries from
step to step; K = 0 for DDPM and DDIM)::

    x_0                     = clip(a x_t - b eps, r)                 (the predicted clean sample)
    [x_prev, h'_1 .. h'_K]  = M [x_0, x_t, h_1 .. h_K, z]            (M: (1 + K) x (3 + K))

where z is fresh noise (only DDPM and DDIM with eta > 0 use it). A step's *row* is
``(a, b, r, *M.flatten())``; a sampler's table holds one row per step, in float64, computed once
when its timesteps are set, so samplers are read-only afterwards and jobs share them. Because the
row is all a step needs, many jobs of different samplers, step counts and steps advance in one
call of :func:`apply_step`, whose kernels do not depend on how many jobs or samplers share it.
A row written for K slots is used with more slots by :func:`widen_row` (the added history is
neither read nor written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_core.sampler_specs import SPACINGS

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
COEF_A, COEF_B, COEF_CLIP = 0, 1, 2  # the columns before M
HEAD = 3  # a, b, r


def row_width(slots: int) -> int:
    """Length of a step's row for ``slots`` history slots: 3 + (1 + K)(3 + K) (6 for K = 0)."""
    return HEAD + (1 + slots) * (3 + slots)


def noise_coefficient(row: Sequence[float], slots: int) -> float:
    """The noise z's coefficient in x_prev (its standard deviation) in a row for ``slots`` slots."""
    return row[HEAD + 2 + slots]


def widen_row(row: Sequence[float], slots: int, wider: int) -> tuple[float, ...]:
    """A row for ``slots`` history slots rewritten for ``wider`` slots: the added slots are
    neither read (zero columns) nor written (zero rows)."""
    if wider == slots:
        return tuple(row)
    if wider < slots:
        raise ValueError(f"cannot narrow a step row from {slots} to {wider} history slots")
    old_columns, columns = 3 + slots, 3 + wider
    matrix = [0.0] * ((1 + wider) * columns)
    for out in range(1 + slots):
        for column in range(old_columns):
            target = column if column < 2 + slots else columns - 1  # z stays the last input
            matrix[out * columns + target] = row[HEAD + out * old_columns + column]
    return (*row[:HEAD], *matrix)


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "trailing") -> list[int]:
    """``num_inference_steps`` of the T training timesteps, ascending.

    'trailing' (the default): T - 1, T - 1 - T/n, ... rounded, so the first step starts from the
    last training step and the last step leaves from t = T/n - 1 straight to the clean sample
    (none is spent between t = 0 and the clean sample; Lin et al. 2024, "Common diffusion noise
    schedules and sample steps are flawed", table 2). 'linspace': n timesteps spread evenly over
    [0, T - 1], both ends kept. With all T steps both give 0, 1, ..., T - 1.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    if (
        not isinstance(num_inference_steps, (int, np.integer))
        or isinstance(num_inference_steps, bool)
        or not 1 <= num_inference_steps <= num_train_timesteps
    ):
        raise ValueError(
            f"num_inference_steps must be an integer in [1, {num_train_timesteps}], got {num_inference_steps!r}"
        )
    if spacing == "trailing":
        ratio = num_train_timesteps / num_inference_steps
        return sorted(int(t) - 1 for t in np.round(np.arange(num_train_timesteps, 0, -ratio)))
    if num_inference_steps == 1:
        return [num_train_timesteps - 1]
    positions = np.linspace(0.0, num_train_timesteps - 1, num_inference_steps)
    return [int(t) for t in np.floor(positions + 0.5)]


def randn_like(sample: torch.Tensor, generator: GeneratorArg) -> torch.Tensor:
    """Standard normal noise of ``sample``'s shape; with a list of generators, row i comes from
    generator i, so each sample's noise depends on its own generator alone.

    Noise is drawn where the generators live and copied to ``sample``'s device in one copy: with
    CPU generators (what :func:`ddpm_core.pipeline.sample_generators` makes) a seed gives the
    same noise on a CPU and on a GPU."""
    if generator is None:
        return torch.randn(sample.shape, device=sample.device, dtype=sample.dtype)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(sample.shape, generator=generator, device=generator.device, dtype=sample.dtype)
        return noise.to(sample.device, non_blocking=True)
    if len(generator) != sample.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {sample.shape[0]}")
    noise = torch.cat(
        [torch.randn((1, *sample.shape[1:]), generator=g, device=g.device, dtype=sample.dtype) for g in generator]
    )
    return noise.to(sample.device, non_blocking=True)


@dataclass
class SamplerOutput:
    """prev_sample: x_{t-1} (B, ...); pred_original_sample: the predicted x_0 (B, ...);
    history: the multistep state after the step, (B, K, ...), or None for a one-step sampler."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    history: torch.Tensor | None = None


def apply_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coefficients: torch.Tensor,
    noise: torch.Tensor | None,
    history: torch.Tensor | None = None,
) -> SamplerOutput:
    """One step of any sampler for a batch of rows, each row with its own table row.

    The kernels launched depend only on the number of history slots, not on how many jobs,
    samplers or steps the rows belong to: this is the step that
    :func:`ddpm_core.batching.denoise_step` runs once per tick. Each output is accumulated
    input by input in a fixed order, so a row's result does not depend on the other rows.

    Args:
        model_output: eps, (R, ...).
        sample: x_t, (R, ...).
        coefficients: (R, W) or (W,) rows of :func:`row_width` (K) values each.
        noise: z, (R, ...), or None when no row adds noise.
        history: (R, K, ...) history slots, or None for K = 0.
    Returns:
        x_prev (R, ...), the predicted x_0 (R, ...) and the new history (R, K, ...) or None, in
        ``sample``'s dtype.
    """
    rows = sample.shape[0]
    slots = 0 if history is None else history.shape[1]
    coefficients = coefficients.to(device=sample.device, dtype=sample.dtype)
    if coefficients.ndim == 1:
        coefficients = coefficients.expand(rows, coefficients.shape[0])
    if coefficients.shape[1] != row_width(slots):
        raise ValueError(f"step rows of width {coefficients.shape[1]} for {slots} history slots")
    unit = [1] * (sample.ndim - 1)
    a, b, clip = (coefficients[:, column].reshape(rows, *unit) for column in (COEF_A, COEF_B, COEF_CLIP))
    pred_original_sample = a * sample - b * model_output.to(sample.dtype)
    pred_original_sample = torch.minimum(torch.maximum(pred_original_sample, -clip), clip)
    columns = 3 + slots
    matrix = coefficients[:, HEAD:].reshape(rows, 1 + slots, columns)
    if history is None:
        weights = matrix[:, 0].T.reshape(columns, rows, *unit)
        prev_sample = weights[0] * pred_original_sample + weights[1] * sample
        if noise is not None:
            prev_sample = prev_sample + weights[2] * noise.to(sample.device, sample.dtype)
        return SamplerOutput(prev_sample, pred_original_sample)
    weights = matrix.permute(2, 0, 1).reshape(columns, rows, 1 + slots, *unit)
    inputs = [pred_original_sample, sample, *history.unbind(1)]
    if noise is not None:
        inputs.append(noise.to(sample.device, sample.dtype))
    outputs = weights[0] * pred_original_sample.unsqueeze(1)
    for column, value in enumerate(inputs[1:], start=1):
        outputs = outputs + weights[column] * value.unsqueeze(1)
    return SamplerOutput(outputs[:, 0].contiguous(), pred_original_sample, outputs[:, 1:])
