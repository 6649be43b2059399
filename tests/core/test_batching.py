"""Generation (the resumable per-job state) and denoise_step (many generations, one forward)."""

from __future__ import annotations

import pytest
import torch

from ddpm_core import UNet, UNetConfig, generate
from ddpm_core.batching import batch_inputs, denoise_step, forward_rows
from ddpm_core.pipeline import Generation
from ddpm_core.samplers import make_sampler
from tests.tiny_models import PIXEL_TOLERANCE, SCHEDULE, SHAPE, TINY, perturbed


@pytest.fixture(scope="module")
def model() -> UNet:
    return perturbed(TINY)


def sampler(name: str, steps: int | None = None, eta: float = 0.0):
    return make_sampler(name, SCHEDULE, steps, **({"eta": eta} if name == "ddim" else {}))


# (sampler, steps, eta, labels, guidance, seed): DDPM over all 50 steps, DDIM and the multistep
# solvers with a few
JOBS = [
    ("ddpm", None, 0.0, [0, 1], 1.5, 3),
    ("ddim", 10, 0.0, [2, 2, 2], 0.0, 5),
    ("ddim", 7, 1.0, [1, None], 2.0, 9),
    ("ddpm", 12, 0.0, None, 0.5, 11),  # no labels with guidance: no unconditional copy needed
    ("ddim", 5, 0.0, [0], 3.0, 1),
    ("dpmpp_2m", 8, 0.0, [1, 2], 1.0, 4),
    ("uni_pc", 6, 0.0, [None, 0, 2], 0.5, 6),
]


def alone(model, job) -> torch.Tensor:
    name, steps, eta, labels, guidance, seed = job
    return generate(
        model,
        sampler(name, steps, eta),
        sample_shape=SHAPE,
        num_samples=2 if labels is None else None,
        class_labels=labels,
        guidance_scale=guidance,
        seed=seed,
    )


def new_generation(model, job, **options) -> Generation:
    name, steps, eta, labels, guidance, seed = job
    return Generation.for_model(
        model,
        sampler(name, steps, eta),
        sample_shape=SHAPE,
        num_samples=2 if labels is None else None,
        class_labels=labels,
        guidance_scale=guidance,
        seed=seed,
        **options,
    )


def assert_close_in_pixels(batched: torch.Tensor, reference: torch.Tensor) -> None:
    assert batched.shape == reference.shape
    pixels = (batched - reference).abs() / 2
    assert pixels.mean().item() < PIXEL_TOLERANCE, pixels.mean().item()
    assert pixels.max().item() < 1 / 255


def test_one_generation_by_hand_is_bit_identical_to_generate(model):
    for job in JOBS:
        generation = new_generation(model, job)
        while not generation.done:
            inputs = generation.model_inputs()
            assert inputs.sample.shape == (generation.forward_rows, *SHAPE)
            assert inputs.timesteps.shape == (generation.forward_rows,)
            generation.advance(*generation.split_output(model(inputs.sample, inputs.timesteps, inputs.class_labels)))
        torch.testing.assert_close(generation.sample, alone(model, job), rtol=0, atol=0)


def test_denoise_step_of_one_generation_is_bit_identical_to_generate(model):
    for job in JOBS:
        generation = new_generation(model, job)
        while not generation.done:
            denoise_step([generation], model)
        torch.testing.assert_close(generation.sample, alone(model, job), rtol=0, atol=0)


def test_generation_state_and_inputs(model):
    generation = new_generation(model, ("ddim", 4, 0.0, [0, 2, None], 1.0, 7))
    assert generation.total == 4 and generation.step_index == 0 and not generation.done
    assert generation.needs_unconditional and generation.forward_rows == 6
    assert generation.timestep == int(generation.sampler.timesteps[0])
    assert generation.timesteps().tolist() == [generation.timestep] * 3
    assert generation.labels.tolist() == [0, 2, 3]
    inputs = generation.model_inputs()
    assert inputs.class_labels.tolist() == [0, 2, 3, 3, 3, 3]
    torch.testing.assert_close(inputs.sample[:3], inputs.sample[3:])
    eps = torch.zeros(3, *SHAPE)
    with pytest.raises(ValueError, match="eps_uncond"):
        generation.advance(eps)
    with pytest.raises(ValueError, match="shape"):
        generation.advance(torch.zeros(2, *SHAPE), torch.zeros(2, *SHAPE))
    infos = [generation.advance(eps, eps) for _ in range(4)]
    assert [info.step for info in infos] == [1, 2, 3, 4] and {info.total for info in infos} == {4}
    assert generation.done and generation.sample is infos[-1].sample
    with pytest.raises(RuntimeError, match="done"):
        generation.model_inputs()


def test_guidance_without_labels_skips_the_unconditional_copy_only_when_asked(model):
    job = ("ddim", 6, 0.0, None, 2.0, 4)
    exact = new_generation(model, job)
    skipping = new_generation(model, job, skip_null_unconditional=True)
    assert exact.forward_rows == 4 and skipping.forward_rows == 2 and not skipping.needs_unconditional
    while not skipping.done:
        denoise_step([skipping], model)
    assert_close_in_pixels(skipping.sample, alone(model, job))


def test_batched_equals_alone_with_jobs_joining_mid_way(model):
    """DDPM and DDIM, several step counts, with and without guidance, in shared forwards;
    jobs join at different steps, leave when done."""
    joins_at = [0, 0, 3, 7, 20, 2, 9]  # tick at which each job joins
    generations: list[Generation | None] = [None] * len(JOBS)
    mixed_forwards = 0

    def forward(x, t, labels):
        nonlocal mixed_forwards
        mixed_forwards += len(set(t.tolist())) > 1
        return model(x, t, labels)

    tick = 0
    while tick == 0 or any(g is not None and not g.done for g in generations):
        for index, job in enumerate(JOBS):
            if joins_at[index] == tick:
                generations[index] = new_generation(model, job, skip_null_unconditional=True)
        active = [g for g in generations if g is not None and not g.done]
        infos = denoise_step(active, forward)
        assert [info.step for info in infos] == [g.step_index for g in active]
        tick += 1
    assert mixed_forwards > 10  # the jobs really shared forwards at different timesteps
    for generation, job in zip(generations, JOBS, strict=True):
        assert_close_in_pixels(generation.sample, alone(model, job))


def test_row_layout_and_chunked_forward(model):
    generations = [new_generation(model, job, skip_null_unconditional=True) for job in JOBS]
    rows = forward_rows(generations)
    assert rows == 4 + 3 + 4 + 2 + 2 + 4 + 6
    sample, timesteps, labels = batch_inputs(generations)
    assert sample.shape == (rows, *SHAPE) and timesteps.shape == (rows,) and labels.shape == (rows,)
    # conditional rows of every generation first, then the unconditional copies
    assert labels.tolist() == [0, 1, 2, 2, 2, 1, 3, 3, 3, 0, 1, 2, 3, 0, 2] + [3] * 10
    sizes = []

    def forward(x, t, y):
        sizes.append(x.shape[0])
        return model(x, t, y)

    chunked = [new_generation(model, job, skip_null_unconditional=True) for job in JOBS]
    for _ in range(5):  # the shortest job has 5 steps
        denoise_step(generations, model)
        denoise_step(chunked, forward, max_batch=4)
    assert max(sizes) <= 4 and sum(sizes) == 5 * rows
    for whole, parts in zip(generations, chunked, strict=True):
        assert_close_in_pixels(parts.sample, whole.sample)


def test_an_error_advancing_one_generation_spares_the_others(model):
    generations = [new_generation(model, job) for job in JOBS[:3]]

    def broken(*args):
        raise RuntimeError("broken sampler")

    generations[1].step_coefficients = broken
    results = denoise_step(generations, model, return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    assert results[0].step == 1 and results[2].step == 1 and generations[1].step_index == 0
    with pytest.raises(RuntimeError, match="broken"):
        denoise_step(generations, model)


def test_unconditional_models_batch_and_do_not_mix_with_conditional_ones(model):
    unconditional = perturbed(UNetConfig(**{**TINY.to_dict(), "num_classes": 0}))
    jobs = [("ddim", 6, 0.0, None, 1.0, 2), ("ddpm", 8, 0.0, None, 0.0, 8)]
    generations = [new_generation(unconditional, job) for job in jobs]
    assert all(g.labels is None and not g.needs_unconditional for g in generations)
    while any(not g.done for g in generations):
        denoise_step([g for g in generations if not g.done], unconditional)
    for generation, job in zip(generations, jobs, strict=True):
        assert_close_in_pixels(generation.sample, alone(unconditional, job))
    with pytest.raises(ValueError, match="conditional"):
        batch_inputs([new_generation(unconditional, jobs[0]), new_generation(model, JOBS[0])])


class RowwiseModel(torch.nn.Module):
    """A stand-in for the network that works row by row in exact elementwise arithmetic, so a
    row's output cannot depend on what else shares its batch (a real U-Net's can, by float noise)."""

    num_classes = TINY.num_classes

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # for the device

    def forward(self, x, t, labels):
        scale = (t.float() + 1).reshape(-1, 1, 1, 1) / 50
        shift = 0.0 if labels is None else labels.float().reshape(-1, 1, 1, 1) / 7
        return torch.tanh(x) * scale + shift


def test_a_tick_mixing_every_sampler_is_bit_identical_to_each_job_alone():
    """Every sampler (one-step and multistep, each job with its own history) in one vectorised
    step, jobs joining at different ticks: each job's samples are exactly what generate() gives
    it alone with the same (row-independent) forward."""
    rowwise = RowwiseModel()
    assert {job[0] for job in JOBS} == {"ddpm", "ddim", "dpmpp_2m", "uni_pc"}
    joins_at = [0, 1, 1, 4, 0, 2, 3]
    generations: list[Generation | None] = [None] * len(JOBS)
    tick = 0
    while tick == 0 or any(g is None or not g.done for g in generations):
        for index, job in enumerate(JOBS):
            if joins_at[index] == tick:
                generations[index] = new_generation(rowwise, job)
        denoise_step([g for g in generations if g is not None and not g.done], rowwise)
        tick += 1
    for generation, job in zip(generations, JOBS, strict=True):
        torch.testing.assert_close(generation.sample, alone(rowwise, job), rtol=0, atol=0)
