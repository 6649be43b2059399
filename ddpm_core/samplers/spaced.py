"""The base of every sampler: the training schedule, the kept timesteps and the table of step
rows (:mod:`ddpm_core.samplers.base`), in the diffusers convention.

A sampler is told how many steps to take with ``set_timesteps(num_inference_steps)``, lists them
(descending) in ``timesteps`` and advances one step with ``step(model_output, timestep, sample,
*, generator=None, history=None)``, which returns the previous sample, the predicted clean
sample and (multistep samplers) the history to pass to the next step. The loop lives in
:func:`ddpm_core.pipeline.generate`; per-job state (x_t, history, generators) lives in
:class:`ddpm_core.pipeline.Generation`, never in the sampler, so jobs share one sampler.

Fewer steps than the model was trained with use *spaced* timesteps: the kept steps'
``alphas_cumprod`` are unchanged and betas are recomputed from them (improved-diffusion).
"""

from __future__ import annotations

import math
from functools import cached_property

import torch

from ddpm_core.sampler_specs import SamplerSpec
from ddpm_core.samplers.base import (
    HEAD,
    GeneratorArg,
    SamplerOutput,
    apply_step,
    noise_coefficient,
    randn_like,
    row_width,
    spaced_timesteps,
    widen_row,
)
from ddpm_core.schedule import NoiseSchedule


class SpacedSampler:
    """Shared bookkeeping: the training schedule, the kept timesteps, the respaced schedule and
    the table of step rows (:attr:`coefficient_rows`).

    Subclasses set :attr:`spec` (their entry of :mod:`ddpm_core.sampler_specs`) and write
    :meth:`_step_row`. ``clip_sample`` clips the predicted x_0 to [-r, r] at every step (r =
    ``clip_sample_range``), as the images were scaled for training.
    """

    spec: SamplerSpec

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        spacing: str = "trailing",
    ) -> None:
        self.schedule = schedule
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.spacing = spacing
        self.init_noise_sigma = 1.0
        self.set_timesteps(schedule.num_train_timesteps)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def history(self) -> int:
        """History slots this sampler reads and writes (0 for a one-step sampler)."""
        return self.spec.history

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int | None = None, spacing: str | None = None) -> None:
        """Choose the steps to take (None: all of the model's training steps) and their
        ``spacing`` ('trailing' or 'linspace'; None: the sampler's, 'trailing' by default)."""
        if num_inference_steps is None:
            num_inference_steps = self.num_train_timesteps
        if spacing is not None:
            self.spacing = spacing
        kept = spaced_timesteps(self.num_train_timesteps, num_inference_steps, self.spacing)
        self.num_inference_steps = num_inference_steps
        self.spaced_schedule = self.schedule.respace(kept)
        self.timesteps = torch.tensor(kept[::-1], dtype=torch.long)
        self._index = {t: i for i, t in enumerate(kept)}
        self.__dict__.pop("_alpha_sigma", None)
        clip = self.clip_sample_range if self.clip_sample else float("inf")
        rows = []
        for index in range(len(kept)):
            row = self._step_row(index)
            if len(row) != row_width(self.history):
                raise AssertionError(f"{type(self).__name__} wrote a row of {len(row)} for {self.history} slots")
            rows.append((float(row[0]), float(row[1]), clip, *(float(value) for value in row[HEAD:])))
        self.coefficient_rows: list[tuple[float, ...]] = rows
        """Row ``i`` is the step from the i-th kept timestep (ascending; row 0 is the last step):
        (a, b, r, M) for :attr:`history` slots; plain floats, so looking one up launches nothing."""
        self._wider: dict[int, list[tuple[float, ...]]] = {self.history: rows}
        self.coefficients = torch.tensor(rows, dtype=torch.float64)
        """:attr:`coefficient_rows` as a (num_inference_steps, W) float64 tensor."""

    # ----------------------------------------------------------------- the schedule at kept steps

    @cached_property
    def _alpha_sigma(self) -> tuple[list[float], list[float]]:
        abar = self.spaced_schedule.alphas_cumprod
        return [math.sqrt(value) for value in abar], [math.sqrt(1.0 - value) for value in abar]

    def alpha(self, index: int) -> float:
        """sqrt(alphabar) at kept index ``index``; index -1 is the clean sample (1)."""
        return 1.0 if index < 0 else self._alpha_sigma[0][index]

    def sigma(self, index: int) -> float:
        """sqrt(1 - alphabar) at kept index ``index``; index -1 is the clean sample (0)."""
        return 0.0 if index < 0 else self._alpha_sigma[1][index]

    def log_snr(self, index: int) -> float:
        """lambda = log(alpha) - log(sigma) at kept index ``index`` (+inf for the clean sample)."""
        sigma = self.sigma(index)
        return math.inf if sigma == 0.0 else math.log(self.alpha(index)) - math.log(sigma)

    def step_number(self, index: int) -> int:
        """How many steps come before the step from kept index ``index`` (0 for the first)."""
        return self.num_inference_steps - 1 - index

    def _step_row(self, index: int) -> tuple[float, ...]:
        """(a, b, r, M) of the step from kept index ``index`` for :attr:`history` slots (r is
        replaced by the clipping range)."""
        raise NotImplementedError

    def _data_prediction(self, index: int) -> tuple[float, float]:
        """(a, b) of x_0 = a x_t - b eps at kept index ``index`` (Ho eq. 4 solved for x_0)."""
        return (
            float(self.spaced_schedule.sqrt_recip_alphas_cumprod[index]),
            float(self.spaced_schedule.sqrt_recipm1_alphas_cumprod[index]),
        )

    # ----------------------------------------------------------------- looking rows up

    def spaced_index(self, timestep: int | torch.Tensor) -> int:
        """The row of :attr:`coefficient_rows` of ``timestep`` (one of :attr:`timesteps`)."""
        key = int(timestep)
        if key not in self._index:
            raise ValueError(f"timestep {key} is not one of this sampler's {self.num_inference_steps} timesteps")
        return self._index[key]

    def step_coefficients(self, timestep: int | torch.Tensor, slots: int | None = None) -> tuple[float, ...]:
        """The row of the step from ``timestep``, written for ``slots`` history slots (default:
        the sampler's own; more slots: :func:`~ddpm_core.samplers.base.widen_row`)."""
        return self.rows_for(self.history if slots is None else slots)[self.spaced_index(timestep)]

    def rows_for(self, slots: int) -> list[tuple[float, ...]]:
        """Every step's row for ``slots`` history slots (cached)."""
        rows = self._wider.get(slots)
        if rows is None:
            rows = [widen_row(row, self.history, slots) for row in self.coefficient_rows]
            self._wider[slots] = rows
        return rows

    def adds_noise(self, timestep: int | torch.Tensor) -> bool:
        """Whether the step from ``timestep`` adds noise."""
        return noise_coefficient(self.step_coefficients(timestep), self.history) > 0

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        generator: GeneratorArg = None,
        history: torch.Tensor | None = None,
    ) -> SamplerOutput:
        """One step x_t -> x_{t_prev}.

        Args:
            model_output: predicted noise eps, (B, ...).
            timestep: one of ``self.timesteps``.
            sample: x_t, (B, ...).
            generator: a generator, or one per sample, for the added noise (drawn only when
                the step adds noise).
            history: a multistep sampler's state from the previous step's output, (B, K, ...);
                None at the first step (zeros).
        """
        row = self.step_coefficients(timestep)
        noise = randn_like(sample, generator) if noise_coefficient(row, self.history) > 0 else None
        if self.history and history is None:
            history = sample.new_zeros((sample.shape[0], self.history, *sample.shape[1:]))
        return apply_step(model_output, sample, torch.tensor(row, dtype=torch.float64), noise, history)
