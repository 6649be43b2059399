"""Reverse-process samplers in the diffusers convention: DDPM, DDIM, DPM-Solver++ 2M and UniPC.

A sampler holds a :class:`~ddpm_core.schedule.NoiseSchedule`, is told how many steps to take
with ``set_timesteps(num_inference_steps)``, lists them (descending) in ``timesteps``, and
advances one step with ``step(model_output, timestep, sample, *, generator=None, history=None)``,
which returns the previous sample, the predicted clean sample and a multistep sampler's history
(:class:`SamplerOutput`). Every step of every sampler is one row of coefficients
(:mod:`ddpm_core.samplers.base`), so jobs of any sampler share one vectorised step.

What each sampler is called and its limits live in :mod:`ddpm_core.sampler_specs` (torch-free);
this package maps each name there to its class (:data:`SAMPLER_CLASSES`).
"""

from __future__ import annotations

from ddpm_core.sampler_specs import MAX_HISTORY, SAMPLER_NAMES, sampler_spec
from ddpm_core.samplers.base import (
    SPACINGS,
    SamplerOutput,
    apply_step,
    noise_coefficient,
    randn_like,
    row_width,
    spaced_timesteps,
    widen_row,
)
from ddpm_core.samplers.multistep import DPMSolverMultistepSampler, UniPCSampler
from ddpm_core.samplers.single_step import DDIMSampler, DDPMSampler
from ddpm_core.samplers.spaced import SpacedSampler

SAMPLER_CLASSES: dict[str, type[SpacedSampler]] = {
    cls.spec.name: cls for cls in (DDPMSampler, DDIMSampler, DPMSolverMultistepSampler, UniPCSampler)
}
SAMPLERS = SAMPLER_CLASSES  # the name earlier code imports


def make_sampler(
    name: str, schedule, num_inference_steps: int | None = None, *, spacing: str = "trailing", **options
) -> SpacedSampler:
    """A sampler by name (one of :data:`~ddpm_core.sampler_specs.SAMPLER_NAMES`) with its
    timesteps set (None: all training steps). ``options``: the class's own (``eta`` for DDIM,
    ``clip_sample``)."""
    sampler_spec(name)  # one error for an unknown name, naming the choices
    cls = SAMPLER_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"sampler {name!r} has no implementation in ddpm_core.samplers")
    sampler = cls(schedule, spacing=spacing, **options)
    sampler.set_timesteps(num_inference_steps)
    return sampler


__all__ = [
    "MAX_HISTORY",
    "SAMPLER_CLASSES",
    "SAMPLER_NAMES",
    "SAMPLERS",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverMultistepSampler",
    "SamplerOutput",
    "SpacedSampler",
    "UniPCSampler",
    "apply_step",
    "make_sampler",
    "noise_coefficient",
    "randn_like",
    "row_width",
    "spaced_timesteps",
    "widen_row",
]
