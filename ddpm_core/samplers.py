"""Reverse-process samplers in the diffusers convention.

A sampler holds a :class:`NoiseSchedule`, is told how many steps to take with
``set_timesteps(num_inference_steps)``, lists them (descending) in ``timesteps``, and
advances one step with ``step(model_output, timestep, sample, *, generator=None)``, which
returns the previous sample and the predicted clean sample. The loop lives in
:func:`ddpm_core.pipeline.generate`.

Fewer steps than the model was trained with use *spaced* timesteps (improved-diffusion): the
kept steps' ``alphas_cumprod`` are unchanged and betas are recomputed from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_core.schedule import NoiseSchedule

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SamplerOutput:
    """prev_sample: x_{t-1} (B, ...); pred_original_sample: the predicted x_0 (B, ...)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """``num_inference_steps`` timesteps spread evenly over [0, T - 1], ascending, both ends kept.

    With all T steps this is 0, 1, ..., T - 1.
    """
    if not isinstance(num_inference_steps, (int, np.integer)) or not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be an integer in [1, {num_train_timesteps}], got {num_inference_steps!r}"
        )
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


# Columns of a sampler's coefficient table (:attr:`_SpacedSampler.coefficients`): every step of
# both samplers is  x_0 = clip(a x_t - b eps, r),  x_prev = c1 x_0 + c2 x_t + s z.
COEF_A, COEF_B, COEF_C1, COEF_C2, COEF_STD, COEF_CLIP = range(6)
NUM_COEFFICIENTS = 6


def apply_step(
    model_output: torch.Tensor, sample: torch.Tensor, coefficients: torch.Tensor, noise: torch.Tensor | None
) -> SamplerOutput:
    """One step of either sampler for a batch of rows, each row with its own coefficients.

    The kernels launched do not depend on how many jobs (or samplers, or steps) the rows
    belong to: this is the step that :func:`ddpm_core.batching.denoise_step` runs once per tick.

    Args:
        model_output: eps, (R, ...).
        sample: x_t, (R, ...).
        coefficients: (R, 6) or (6,): the rows of :attr:`_SpacedSampler.coefficients` (a, b,
            c1, c2, s, r) for each row's step; r = inf means no clipping.
        noise: z, (R, ...), or None when every s is 0.
    Returns:
        x_prev (R, ...) and the predicted x_0 (R, ...), in ``sample``'s dtype.
    """
    coefficients = coefficients.to(device=sample.device, dtype=sample.dtype)
    if coefficients.ndim == 1:
        coefficients = coefficients.expand(sample.shape[0], NUM_COEFFICIENTS)
    column = coefficients.T.reshape(NUM_COEFFICIENTS, sample.shape[0], *([1] * (sample.ndim - 1)))
    pred_original_sample = column[COEF_A] * sample - column[COEF_B] * model_output.to(sample.dtype)
    clip = column[COEF_CLIP]
    pred_original_sample = torch.minimum(torch.maximum(pred_original_sample, -clip), clip)
    prev_sample = column[COEF_C1] * pred_original_sample + column[COEF_C2] * sample
    if noise is not None:
        prev_sample = prev_sample + column[COEF_STD] * noise.to(sample.device, sample.dtype)
    return SamplerOutput(prev_sample, pred_original_sample)


class _SpacedSampler:
    """Shared bookkeeping: the training schedule, the kept timesteps, the respaced schedule and
    the table of step coefficients (:attr:`coefficients`)."""

    def __init__(self, schedule: NoiseSchedule, *, clip_sample: bool = True, clip_sample_range: float = 1.0) -> None:
        self.schedule = schedule
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.init_noise_sigma = 1.0
        self.set_timesteps(schedule.num_train_timesteps)

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Choose the steps to take; None means all of the model's training steps."""
        if num_inference_steps is None:
            num_inference_steps = self.num_train_timesteps
        kept = spaced_timesteps(self.num_train_timesteps, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.spaced_schedule = self.schedule.respace(kept)
        self.timesteps = torch.tensor(kept[::-1], dtype=torch.long)
        self._index = {t: len(kept) - 1 - i for i, t in enumerate(kept[::-1])}
        clip = self.clip_sample_range if self.clip_sample else float("inf")
        rows = [(*self._step_terms(index), clip) for index in range(len(kept))]
        self.coefficient_rows: list[tuple[float, ...]] = rows
        """Row ``i`` holds (a, b, c1, c2, s, r) of the step from the i-th kept timestep
        (ascending), columns ``COEF_*``; plain floats, so looking one up launches nothing."""
        self.coefficients = torch.tensor(rows, dtype=torch.float64)
        """:attr:`coefficient_rows` as a (num_inference_steps, 6) float64 tensor."""

    def _step_terms(self, index: int) -> tuple[float, float, float, float, float]:
        """(a, b, c1, c2, s) of the step from spaced index ``index``."""
        raise NotImplementedError

    def spaced_index(self, timestep: int | torch.Tensor) -> int:
        """The row of :attr:`coefficients` of ``timestep`` (one of :attr:`timesteps`)."""
        key = int(timestep)
        if key not in self._index:
            raise ValueError(f"timestep {key} is not one of this sampler's {self.num_inference_steps} timesteps")
        return self._index[key]

    def step_coefficients(self, timestep: int | torch.Tensor) -> tuple[float, ...]:
        """The 6 coefficients (columns ``COEF_*``) of the step from ``timestep``."""
        return self.coefficient_rows[self.spaced_index(timestep)]

    def _term(self, name: str, index: int) -> float:
        return float(getattr(self.spaced_schedule, name)[index])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        generator: GeneratorArg = None,
    ) -> SamplerOutput:
        """One step x_t -> x_{t_prev}.

        Args:
            model_output: predicted noise eps, (B, ...).
            timestep: one of ``self.timesteps``.
            sample: x_t, (B, ...).
            generator: a generator, or one per sample, for the added noise (drawn only when
                the step adds noise).
        """
        coefficients = self.step_coefficients(timestep)
        noise = randn_like(sample, generator) if coefficients[COEF_STD] > 0 else None
        return apply_step(model_output, sample, torch.tensor(coefficients, dtype=torch.float64), noise)


class DDPMSampler(_SpacedSampler):
    """The ancestral sampler of Ho et al. (2020), Algorithm 2, with variance beta~_t ("fixed small").

    With ``set_timesteps(T)`` (the default) it takes every training step.
    """

    def _step_terms(self, index: int) -> tuple[float, float, float, float, float]:
        # x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)            (Ho eq. 4 solved for x_0)
        a, b = self._term("sqrt_recip_alphas_cumprod", index), self._term("sqrt_recipm1_alphas_cumprod", index)
        # posterior mean mu~_t(x_t, x_0) = coef1 x_0 + coef2 x_t                 (Ho eq. 7)
        c1, c2 = self._term("posterior_mean_coef1", index), self._term("posterior_mean_coef2", index)
        std = 0.0 if index == 0 else float(np.exp(0.5 * self._term("posterior_log_variance_clipped", index)))
        return a, b, c1, c2, std


class DDIMSampler(_SpacedSampler):
    """DDIM (Song et al. 2021): deterministic for ``eta`` = 0, DDPM-like for ``eta`` = 1."""

    def __init__(
        self, schedule: NoiseSchedule, eta: float = 0.0, *, clip_sample: bool = True, clip_sample_range: float = 1.0
    ) -> None:
        if eta < 0:
            raise ValueError("eta must be >= 0")
        self.eta = eta
        super().__init__(schedule, clip_sample=clip_sample, clip_sample_range=clip_sample_range)

    def _step_terms(self, index: int) -> tuple[float, float, float, float, float]:
        """Song et al. eq. 12: x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - s^2) eps' + s z, where
        eps' = (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t) is the noise consistent with the (clipped)
        x_0; gathered by x_0 and x_t that is c1 x_0 + c2 x_t."""
        alpha_prod = self._term("alphas_cumprod", index)
        alpha_prod_prev = self._term("alphas_cumprod_prev", index)  # 1 before the first kept step
        a, b = self._term("sqrt_recip_alphas_cumprod", index), self._term("sqrt_recipm1_alphas_cumprod", index)
        # sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)     (Song eq. 16)
        variance = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod) * (1.0 - alpha_prod / alpha_prod_prev)
        std = self.eta * max(variance, 0.0) ** 0.5
        direction = max(1.0 - alpha_prod_prev - std**2, 0.0) ** 0.5 / (1.0 - alpha_prod) ** 0.5
        c1 = alpha_prod_prev**0.5 - direction * alpha_prod**0.5
        return a, b, c1, direction, std if index > 0 else 0.0


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(
    name: str, schedule: NoiseSchedule, num_inference_steps: int | None = None, **options
) -> DDPMSampler | DDIMSampler:
    """A sampler by name ('ddpm' or 'ddim') with its timesteps set."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[name](schedule, **options)
    sampler.set_timesteps(num_inference_steps)
    return sampler
