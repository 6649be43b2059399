"""The one-step samplers: DDPM's ancestral step and DDIM. Each step reads x_t and the model's
eps alone (no history): its row is (a, b, r, c1, c2, s), x_prev = c1 x_0 + c2 x_t + s z."""

from __future__ import annotations

import numpy as np

from ddpm_core.sampler_specs import DDIM, DDPM
from ddpm_core.samplers.spaced import SpacedSampler
from ddpm_core.schedule import NoiseSchedule


class DDPMSampler(SpacedSampler):
    """The ancestral sampler of Ho et al. (2020), Algorithm 2, with variance beta~_t ("fixed small").

    With ``set_timesteps(T)`` (the default) it takes every training step; fewer steps run on the
    respaced schedule.
    """

    spec = DDPM

    def _step_row(self, index: int) -> tuple[float, ...]:
        a, b = self._data_prediction(index)
        # posterior mean mu~_t(x_t, x_0) = coef1 x_0 + coef2 x_t                 (Ho eq. 7)
        c1 = float(self.spaced_schedule.posterior_mean_coef1[index])
        c2 = float(self.spaced_schedule.posterior_mean_coef2[index])
        log_variance = float(self.spaced_schedule.posterior_log_variance_clipped[index])
        std = 0.0 if index == 0 else float(np.exp(0.5 * log_variance))
        return a, b, 0.0, c1, c2, std


class DDIMSampler(SpacedSampler):
    """DDIM (Song et al. 2021): deterministic for ``eta`` = 0, DDPM-like for ``eta`` = 1."""

    spec = DDIM

    def __init__(
        self,
        schedule: NoiseSchedule,
        eta: float = 0.0,
        *,
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        spacing: str = "trailing",
    ) -> None:
        if eta < 0:
            raise ValueError("eta must be >= 0")
        self.eta = eta
        super().__init__(schedule, clip_sample=clip_sample, clip_sample_range=clip_sample_range, spacing=spacing)

    def _step_row(self, index: int) -> tuple[float, ...]:
        """Song et al. eq. 12: x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - s^2) eps' + s z, where
        eps' = (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t) is the noise consistent with the (clipped)
        x_0; gathered by x_0 and x_t that is c1 x_0 + c2 x_t."""
        alpha_prod = float(self.spaced_schedule.alphas_cumprod[index])
        alpha_prod_prev = float(self.spaced_schedule.alphas_cumprod_prev[index])  # 1 before the first kept step
        a, b = self._data_prediction(index)
        # sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)     (Song eq. 16)
        variance = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod) * (1.0 - alpha_prod / alpha_prod_prev)
        std = self.eta * max(variance, 0.0) ** 0.5
        direction = max(1.0 - alpha_prod_prev - std**2, 0.0) ** 0.5 / (1.0 - alpha_prod) ** 0.5
        c1 = alpha_prod_prev**0.5 - direction * alpha_prod**0.5
        return a, b, 0.0, c1, direction, std if index > 0 else 0.0
