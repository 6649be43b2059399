import math

import numpy as np
import pytest
import torch

from ddpm_core import NoiseSchedule
from ddpm_core.schedule import cosine_alphas_cumprod


def test_linear_schedule_matches_ho_et_al():
    schedule = NoiseSchedule.linear(1000)
    assert schedule.betas[0] == pytest.approx(1e-4)
    assert schedule.betas[-1] == pytest.approx(0.02)
    expected = np.prod(1.0 - np.linspace(1e-4, 0.02, 1000))
    assert schedule.alphas_cumprod[-1] == pytest.approx(expected, rel=1e-12)
    assert schedule.alphas_cumprod[-1] == pytest.approx(4.0e-5, rel=0.05)
    assert schedule.betas.dtype == np.float64
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)


def test_linear_schedule_keeps_the_given_betas_for_any_length():
    """T = 350 with 1e-4..2e-2 is 1e-4..2e-2, not silently rescaled to 2.86e-4..0.0571."""
    for T in (100, 350, 1000):
        schedule = NoiseSchedule.linear(T)
        assert schedule.betas[0] == 1e-4 and schedule.betas[-1] == 0.02 and len(schedule) == T
    given = NoiseSchedule.linear(350, beta_start=2e-4, beta_end=0.03)
    assert given.betas[0] == 2e-4 and given.betas[-1] == 0.03
    assert given.config == {"kind": "linear", "num_train_timesteps": 350, "beta_start": 2e-4, "beta_end": 0.03}
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        NoiseSchedule.linear(10, beta_start=0.02, beta_end=0.01)


def test_linear_schedule_scales_only_when_asked():
    short = NoiseSchedule.linear(100, scale_to_length=True)
    assert short.betas[0] == pytest.approx(1e-3)
    assert short.betas[-1] == pytest.approx(0.2)
    assert short.alphas_cumprod[-1] < 1e-3  # x_T is still (nearly) pure noise
    flowers = NoiseSchedule.linear(350, scale_to_length=True)
    assert flowers.betas[0] == pytest.approx(2.857e-4, rel=1e-3)
    assert flowers.betas[-1] == pytest.approx(0.05714, rel=1e-3)
    assert NoiseSchedule.linear(10, 1e-4, 0.5, scale_to_length=True).betas[-1] == 0.999  # capped


@pytest.mark.parametrize(
    "schedule",
    [
        NoiseSchedule.linear(350),
        NoiseSchedule.linear(350, scale_to_length=True),
        NoiseSchedule.linear(77, beta_start=1.234567e-4, beta_end=0.0234567),
        NoiseSchedule.linear(100, 1e-4, 0.02, scale_to_length=True),
        NoiseSchedule.cosine(350),
    ],
    ids=repr,
)
def test_the_stored_config_rebuilds_the_same_betas_bit_for_bit(schedule):
    import json

    rebuilt = NoiseSchedule.from_config(json.loads(json.dumps(schedule.config)))
    np.testing.assert_array_equal(rebuilt.betas, schedule.betas)
    np.testing.assert_array_equal(rebuilt.alphas_cumprod, schedule.alphas_cumprod)


def test_cosine_schedule_matches_closed_form():
    T, s = 1000, 0.008
    schedule = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        # alphas_cumprod[t] is alphabar at paper step t + 1 (unclipped region)
        assert schedule.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert schedule.betas.max() <= 0.999
    assert schedule.betas[-1] == pytest.approx(0.999)
    assert cosine_alphas_cumprod(T)[0] == 1.0


def test_posterior_terms_match_closed_form():
    schedule = NoiseSchedule.linear(1000)
    t = 500
    beta, abar, abar_prev = schedule.betas[t], schedule.alphas_cumprod[t], schedule.alphas_cumprod[t - 1]
    assert schedule.posterior_variance[t] == pytest.approx((1 - abar_prev) / (1 - abar) * beta)
    assert schedule.posterior_mean_coef1[t] == pytest.approx(math.sqrt(abar_prev) * beta / (1 - abar))
    assert schedule.posterior_mean_coef2[t] == pytest.approx(math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar))
    assert schedule.posterior_variance[0] == 0.0
    assert np.isfinite(schedule.posterior_log_variance_clipped).all()


def test_schedule_terms_are_frozen():
    schedule = NoiseSchedule.linear(10)
    with pytest.raises(ValueError):
        schedule.alphas_cumprod[0] = 0.5
    with pytest.raises(AttributeError):
        schedule.betas = np.ones(10)


def test_add_noise_statistics():
    schedule = NoiseSchedule.cosine(1000)
    generator = torch.Generator().manual_seed(0)
    original = torch.full((20000, 4), 0.7)
    noise = torch.randn(original.shape, generator=generator)
    t = 300
    noisy = schedule.add_noise(original, noise, torch.full((20000,), t))
    abar = schedule.alphas_cumprod[t]
    assert noisy.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
    assert noisy.var().item() == pytest.approx(1 - abar, rel=0.03)
    # per-sample timesteps broadcast row by row
    rows = schedule.add_noise(torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2), torch.tensor([0, 999]))
    assert rows[0].flatten()[0].item() == pytest.approx(math.sqrt(schedule.alphas_cumprod[0]), rel=1e-6)
    assert rows[1].flatten()[0].item() == pytest.approx(math.sqrt(schedule.alphas_cumprod[999]), rel=1e-5)


def test_respace_all_steps_is_identity_and_keeps_alphas_cumprod():
    schedule = NoiseSchedule.linear(1000)
    same = schedule.respace(range(1000))
    np.testing.assert_allclose(same.betas, schedule.betas, rtol=1e-10)
    kept = [0, 250, 500, 999]
    spaced = schedule.respace(kept)
    np.testing.assert_allclose(spaced.alphas_cumprod, schedule.alphas_cumprod[kept], rtol=1e-12)


def test_schedule_config_round_trip_and_errors():
    schedule = NoiseSchedule.cosine(200)
    rebuilt = NoiseSchedule.from_config(schedule.config)
    np.testing.assert_array_equal(rebuilt.betas, schedule.betas)
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.from_config({"kind": "quadratic", "num_train_timesteps": 10})
    with pytest.raises(ValueError):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError):
        schedule.respace([5, 3])
