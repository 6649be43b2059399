import math

import numpy as np
import pytest
import torch

from ddpm_core import DDIMSampler, DDPMSampler, NoiseSchedule
from ddpm_core.samplers import spaced_timesteps


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_spaced_timesteps(spacing):
    assert spaced_timesteps(1000, 1000, spacing) == list(range(1000))
    for total, steps in [(1000, 50), (1000, 999), (1000, 3), (100, 7), (350, 8), (350, 349), (5, 1)]:
        kept = spaced_timesteps(total, steps, spacing)
        assert len(kept) == steps and kept[-1] == total - 1  # starts from the last training step
        assert all(a < b for a, b in zip(kept, kept[1:], strict=False)) and kept[0] >= 0
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 0, spacing)
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 1001, spacing)


def test_trailing_spacing_leaves_no_step_between_t0_and_the_clean_sample():
    """Trailing: 999, 899, ..., 99 for 10 of 1000 (the last step goes from t = 99 to x_0);
    linspace keeps t = 0, a step that barely changes anything."""
    assert spaced_timesteps(1000, 10) == list(range(99, 1000, 100))
    assert spaced_timesteps(1000, 10, "linspace")[0] == 0
    with pytest.raises(ValueError, match="spacing"):
        spaced_timesteps(1000, 10, "leading")


def test_sampler_timesteps_descend():
    sampler = DDIMSampler(NoiseSchedule.linear(1000))
    sampler.set_timesteps(10)
    assert sampler.timesteps.tolist() == sorted(spaced_timesteps(1000, 10), reverse=True)
    sampler.set_timesteps(10, spacing="linspace")
    assert sampler.timesteps.tolist()[-1] == 0
    ddpm = DDPMSampler(NoiseSchedule.linear(1000))
    assert len(ddpm.timesteps) == 1000 and ddpm.timesteps[0] == 999 and ddpm.timesteps[-1] == 0


def test_ddim_with_all_steps_uses_the_original_schedule():
    schedule = NoiseSchedule.cosine(1000)
    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(1000)
    np.testing.assert_allclose(sampler.spaced_schedule.betas, schedule.betas, rtol=1e-9)
    np.testing.assert_allclose(sampler.spaced_schedule.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-12)


def test_ddpm_step_mean_is_the_gaussian_posterior():
    """With the true noise, the DDPM step mean equals the Bayes posterior of q(x_{t-1} | x_t, x_0)."""
    schedule = NoiseSchedule.linear(1000)
    sampler = DDPMSampler(schedule, clip_sample=False)
    t = 400
    x0 = torch.tensor([[0.3, -0.5]], dtype=torch.float64)
    eps = torch.tensor([[1.2, -0.4]], dtype=torch.float64)
    xt = schedule.add_noise(x0, eps, torch.tensor([t]))
    # Product of Gaussians: q(x_{t-1}|x_0) = N(sqrt(abar_{t-1}) x0, 1-abar_{t-1}) and
    # q(x_t|x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t), solved independently of the schedule's coefficients.
    abar_prev, alpha, beta = schedule.alphas_cumprod[t - 1], schedule.alphas[t], schedule.betas[t]
    precision = 1 / (1 - abar_prev) + alpha / beta
    mean = (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(alpha) * xt / beta) / precision
    zero_noise = [torch.Generator().manual_seed(0)]
    out = sampler.step(eps, t, xt, generator=zero_noise)
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    recovered_mean = out.prev_sample - math.sqrt(1 / precision) * noise
    torch.testing.assert_close(recovered_mean, mean, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-6, atol=1e-8)
    assert schedule.posterior_variance[t] == pytest.approx(1 / precision, rel=1e-9)


@pytest.mark.parametrize("steps", [1000, 50, 10])
def test_oracle_model_makes_ddim_recover_the_data(steps):
    schedule = NoiseSchedule.linear(1000)
    sampler = DDIMSampler(schedule, eta=0.0)
    sampler.set_timesteps(steps)
    x0 = torch.tensor([[0.8, -0.3], [-0.6, 0.1]], dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sample = schedule.add_noise(x0, eps, torch.full((2,), int(sampler.timesteps[0])))
    for t in sampler.timesteps.tolist():
        out = sampler.step(eps, t, sample)  # the oracle: the true noise at every step
        torch.testing.assert_close(out.pred_original_sample, x0)
        sample = out.prev_sample
    torch.testing.assert_close(sample, x0)


def test_oracle_model_makes_ddpm_recover_the_data():
    """An oracle that knows x_0 (eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)) drives DDPM to x_0."""
    schedule = NoiseSchedule.cosine(200)
    sampler = DDPMSampler(schedule)
    x0 = torch.tensor([[0.5, -0.25, 0.9]])
    sample = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(4)
    for t in sampler.timesteps.tolist():
        abar = schedule.alphas_cumprod[t]
        eps = (sample - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        sample = sampler.step(eps, t, sample, generator=generator).prev_sample
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=0)


def test_ddpm_noise_is_per_sample():
    schedule = NoiseSchedule.linear(100)
    sampler = DDPMSampler(schedule)
    x = torch.zeros(3, 2)
    generators = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    batch = sampler.step(torch.zeros_like(x), 50, x, generator=generators).prev_sample
    single = sampler.step(
        torch.zeros(1, 2), 50, torch.zeros(1, 2), generator=[torch.Generator().manual_seed(8)]
    ).prev_sample
    torch.testing.assert_close(batch[1:2], single)


def test_step_rejects_unknown_timestep():
    sampler = DDIMSampler(NoiseSchedule.linear(1000))
    sampler.set_timesteps(10)
    with pytest.raises(ValueError, match="not one of"):
        sampler.step(torch.zeros(1, 2), 500, torch.zeros(1, 2))
