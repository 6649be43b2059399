"""The multistep solvers (DPM-Solver++ 2M, UniPC): against an independent implementation
(diffusers' schedulers, a test-only dependency) on the same schedule and the same fixed model
outputs, against DDIM at order 1, and driven by an oracle model to the data on the schedules of
the seed systems (T = 100 checkerboard, T = 350 flowers, T = 1000 MNIST, linear and cosine)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_core import NoiseSchedule
from ddpm_core.sampler_specs import SAMPLER_NAMES, sampler_spec
from ddpm_core.samplers import (
    SAMPLER_CLASSES,
    DDIMSampler,
    DPMSolverMultistepSampler,
    UniPCSampler,
    make_sampler,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notes inside diffusers

SCHEDULES = {
    "mnist": NoiseSchedule.linear(1000),
    "checkerboard": NoiseSchedule.linear(100, scale_to_length=True),
    "flowers": NoiseSchedule.linear(350, 1e-4, 2e-2),
    "cosine": NoiseSchedule.cosine(1000),
}
SHAPE = (3, 1, 4, 4)


def fixed_outputs(schedule: NoiseSchedule, timesteps: list[int], seed: int = 0):
    """x_T (3, 1, 4, 4) and one model output per step, fixed in advance: the noise of a
    trajectory towards a fixed x_0, perturbed (x stays of order 1, as with a real model)."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(SHAPE, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    abar = schedule.alphas_cumprod[timesteps[0]]
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * noise
    # each output's error moves the predicted x_0 by 0.2 sigma z: of order 1, as a real model's
    outputs = [
        noise
        + 0.2 * math.sqrt(schedule.alphas_cumprod[t]) * torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        for t in timesteps
    ]
    return x_t, outputs


def reference_scheduler(name: str, schedule: NoiseSchedule, steps: int, order: int = 2, variant: str = "bh2"):
    """diffusers' scheduler of the same solver, trailing spacing, the last step to sigma = 0,
    computing in float64 from our schedule's alphas_cumprod."""
    options = {
        "num_train_timesteps": schedule.num_train_timesteps,
        "trained_betas": schedule.betas,
        "timestep_spacing": "trailing",
        "prediction_type": "epsilon",
        "solver_order": order,
        "lower_order_final": True,
        "final_sigmas_type": "zero",
    }
    if name == "dpmpp_2m":
        reference = diffusers.DPMSolverMultistepScheduler(
            **options, algorithm_type="dpmsolver++", solver_type="midpoint"
        )
    else:
        reference = diffusers.UniPCMultistepScheduler(**options, solver_type=variant, predict_x0=True)
    abar = torch.tensor(schedule.alphas_cumprod, dtype=torch.float64)
    reference.alphas_cumprod = abar
    reference.alpha_t, reference.sigma_t = abar.sqrt(), (1 - abar).sqrt()
    reference.lambda_t = reference.alpha_t.log() - reference.sigma_t.log()
    reference.set_timesteps(steps)
    kept = reference.timesteps.numpy()
    sigmas = np.sqrt((1 - schedule.alphas_cumprod[kept]) / schedule.alphas_cumprod[kept])
    reference.sigmas = torch.tensor(np.append(sigmas, 0.0), dtype=torch.float64)  # float32 there otherwise
    return reference


SOLVERS = {  # ours (name, options) and diffusers' (order, variant)
    "dpmpp_2m": ("dpmpp_2m", {}, 2, "bh2"),
    "uni_pc": ("uni_pc", {}, 3, "bh1"),  # the defaults: order 3, B(h) = h
    "uni_pc-2-bh2": ("uni_pc", {"order": 2, "variant": "bh2"}, 2, "bh2"),
    "uni_pc-2-bh1": ("uni_pc", {"order": 2, "variant": "bh1"}, 2, "bh1"),
}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    ("system", "steps"),
    [("mnist", 5), ("mnist", 8), ("mnist", 20), ("checkerboard", 10), ("flowers", 7), ("cosine", 10), ("mnist", 2)],
)
def test_matches_diffusers_on_the_same_outputs(solver, system, steps):
    schedule = SCHEDULES[system]
    name, options, order, variant = SOLVERS[solver]
    ours = make_sampler(name, schedule, steps, clip_sample=False, **options)
    reference = reference_scheduler(name, schedule, steps, order, variant)
    assert reference.timesteps.tolist() == ours.timesteps.tolist()
    x_t, outputs = fixed_outputs(schedule, ours.timesteps.tolist())
    sample, history = x_t.clone(), None
    for eps, timestep in zip(outputs, ours.timesteps.tolist(), strict=True):
        # both step from the same sample (diffusers computes its DPM-Solver++ step in float32, so
        # its trajectory drifts from a float64 one by float32 rounding); each keeps its own history
        stepped = ours.step(eps, timestep, sample, history=history)
        expected = reference.step(eps, timestep, sample).prev_sample.to(torch.float64)
        if timestep == ours.timesteps[-1] and variant == "bh1":
            # diffusers' B(h) = h is infinite on the step to sigma = 0 and its update gives NaN
            # (infinity times a zero); that step is x_0 itself, the data prediction
            abar = schedule.alphas_cumprod[timestep]
            assert torch.isnan(expected).all()
            expected = (sample - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        torch.testing.assert_close(stepped.prev_sample, expected, rtol=0, atol=1e-5)
        sample, history = expected, stepped.history
    assert 0.1 < sample.abs().max() < 10  # x stayed of order 1: the tolerance means something


@pytest.mark.parametrize("steps", [3, 8, 25])
def test_first_order_dpm_solver_is_ddim(steps):
    schedule = SCHEDULES["mnist"]
    dpm = DPMSolverMultistepSampler(schedule, order=1)
    ddim = DDIMSampler(schedule, eta=0.0)
    dpm.set_timesteps(steps)
    ddim.set_timesteps(steps)
    x_t, outputs = fixed_outputs(schedule, dpm.timesteps.tolist(), seed=1)
    a, b, history = x_t.clone(), x_t.clone(), None
    for eps, timestep in zip(outputs, dpm.timesteps.tolist(), strict=True):
        stepped = dpm.step(eps, timestep, a, history=history)
        a, history = stepped.prev_sample, stepped.history
        b = ddim.step(eps, timestep, b).prev_sample
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("system", ["checkerboard", "flowers", "cosine"])
def test_an_oracle_model_drives_every_sampler_to_the_data(name, system):
    """A model that knows x_0 (eps = (x_t - alpha x_0) / sigma): every sampler ends on x_0, and
    its last step is the clean sample itself (x_prev = predicted x_0)."""
    schedule = SCHEDULES[system]
    sampler = make_sampler(name, schedule, None if name == "ddpm" else 7)
    generator = torch.Generator().manual_seed(5)
    x0 = torch.rand(SHAPE, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    sample = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    history = None
    for timestep in sampler.timesteps.tolist():
        abar = schedule.alphas_cumprod[timestep]
        eps = (sample - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        stepped = sampler.step(eps, timestep, sample, history=history, generator=generator)
        sample, history = stepped.prev_sample, stepped.history
    torch.testing.assert_close(stepped.prev_sample, stepped.pred_original_sample, rtol=0, atol=1e-12)
    torch.testing.assert_close(sample, x0, rtol=0, atol=1e-4 if name == "ddpm" else 1e-9)


def test_every_named_sampler_has_a_class_and_its_spec():
    assert set(SAMPLER_CLASSES) == set(SAMPLER_NAMES)
    for name, cls in SAMPLER_CLASSES.items():
        assert cls.spec is sampler_spec(name)
        sampler = make_sampler(name, SCHEDULES["checkerboard"], 10)
        widths = {len(row) for row in sampler.coefficient_rows}
        assert widths == {3 + (1 + cls.spec.history) * (3 + cls.spec.history)}  # the history it declares


def test_orders_and_history_of_unipc_and_dpm_solver():
    """Order 3: the first steps build up the order (no history yet), the last two lower it; the
    last goes to x_0 directly."""
    schedule = SCHEDULES["mnist"]
    unipc = UniPCSampler(schedule)
    unipc.set_timesteps(8)
    assert [unipc._orders(index) for index in reversed(range(8))] == [1, 2, 3, 3, 3, 3, 2, 1]
    with pytest.raises(ValueError, match="order"):
        UniPCSampler(schedule, order=4)  # more than its history slots hold
    with pytest.raises(ValueError, match="variant"):
        UniPCSampler(schedule, variant="bh3")
    with pytest.raises(ValueError, match="order"):
        DPMSolverMultistepSampler(schedule, order=0)
    last = unipc.coefficient_rows[0]  # the step to x_0: x_prev = x_0, nothing else
    assert last[3] == pytest.approx(1.0) and all(value == 0 for value in last[4 : 3 + 3 + unipc.history])
