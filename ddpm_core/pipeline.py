"""The one generation loop: noise -> model -> sampler step, with classifier-free guidance.

Guidance follows Ho & Salimans (2022): eps = eps(x, y) + w (eps(x, y) - eps(x, null)); the
conditional and unconditional passes run as one batched forward, and w = 0 skips the second.
Each sample draws its noise from its own generator seeded with ``seed + i``, so a sample is
the same whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddpm_core.errors import GenerationCancelled
from ddpm_core.samplers import DDIMSampler, DDPMSampler, randn_like


@dataclass
class StepInfo:
    """What a callback sees after each step (1-based ``step`` of ``total``).

    ``sample`` is x_{t-1} and ``pred_original_sample`` the predicted x_0, both (B, ...) on the
    model's device; copying them to the host is the callback's choice (and cost).
    """

    step: int
    total: int
    timestep: int
    sample: torch.Tensor
    pred_original_sample: torch.Tensor


StepCallback = Callable[[StepInfo], None]


def resolve_labels(
    class_labels: Sequence[int | None] | torch.Tensor | None, num_samples: int, num_classes: int, device: torch.device
) -> torch.Tensor | None:
    """Class labels as a (B,) long tensor where None (or no labels) becomes the null label
    ``num_classes``; None for an unconditional model."""
    if num_classes == 0:
        if class_labels is not None and any(label is not None for label in list(class_labels)):
            raise ValueError("this model is unconditional: it takes no class labels")
        return None
    if class_labels is None:
        labels = [num_classes] * num_samples
    else:
        labels = [num_classes if label is None else int(label) for label in list(class_labels)]
        if len(labels) != num_samples:
            raise ValueError(f"{len(labels)} class labels for {num_samples} samples")
        bad = [label for label in labels if not 0 <= label <= num_classes]
        if bad:
            raise ValueError(f"class label {bad[0]} out of range [0, {num_classes - 1}]")
    return torch.tensor(labels, dtype=torch.long, device=device)


def sample_generators(seed: int | Sequence[int], num_samples: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample: seeds ``seed + i`` for an int, else the given seeds."""
    seeds = [int(seed) + i for i in range(num_samples)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != num_samples:
        raise ValueError(f"{len(seeds)} seeds for {num_samples} samples")
    return [torch.Generator(device=device).manual_seed(s % 2**63) for s in seeds]


@torch.inference_mode()
def guided_model_output(
    model: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    labels: torch.Tensor | None,
    guidance_scale: float,
    null_label: int,
) -> torch.Tensor:
    """eps with classifier-free guidance; sample (B, ...), labels (B,) or None -> (B, ...)."""
    if labels is None or guidance_scale == 0:
        return model(sample, timestep.expand(sample.shape[0]), labels)
    doubled = torch.cat([sample, sample])
    both_labels = torch.cat([labels, torch.full_like(labels, null_label)])
    conditional, unconditional = model(doubled, timestep.expand(doubled.shape[0]), both_labels).chunk(2)
    return conditional + guidance_scale * (conditional - unconditional)


@torch.inference_mode()
def generate(
    model: nn.Module,
    sampler: DDPMSampler | DDIMSampler,
    *,
    sample_shape: Sequence[int],
    num_samples: int | None = None,
    class_labels: Sequence[int | None] | torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    seed: int | Sequence[int] = 0,
    callback: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise to samples.

    Args:
        model: eps_theta(x, t, y), already on its device and in eval mode.
        sampler: a sampler whose timesteps are set.
        sample_shape: one sample's shape, e.g. (1, 28, 28) or (2,).
        num_samples: batch size; defaults to ``len(class_labels)``.
        class_labels: one label per sample (None entries: unconditional); None: all unconditional.
        guidance_scale: w >= 0; 0 is the plain conditional model.
        seed: base seed (sample i uses ``seed + i``) or one seed per sample.
        callback: called after every step with a :class:`StepInfo`.
        should_stop: polled before every step; returning True raises :class:`GenerationCancelled`.
    Returns:
        The final samples, (B, *sample_shape), float32 on the model's device.
    """
    if num_samples is None:
        if class_labels is None:
            raise ValueError("give num_samples or class_labels")
        num_samples = len(class_labels)
    if num_samples < 1:
        raise ValueError("num_samples must be at least 1")
    if guidance_scale < 0:
        raise ValueError("guidance_scale must be >= 0")
    parameter = next(model.parameters())
    device = parameter.device
    num_classes = int(getattr(model, "num_classes", 0))
    labels = resolve_labels(class_labels, num_samples, num_classes, device)
    generators = sample_generators(seed, num_samples, device)

    shape = (num_samples, *sample_shape)
    sample = randn_like(torch.empty(shape, device=device, dtype=torch.float32), generators) * sampler.init_noise_sigma
    timesteps_on_device = sampler.timesteps.to(device)  # one copy, then indexing: no per-step sync
    total = len(timesteps_on_device)
    for step, timestep in enumerate(sampler.timesteps.tolist(), start=1):
        if should_stop is not None and should_stop():
            raise GenerationCancelled(step - 1, total)
        timestep_tensor = timesteps_on_device[step - 1 : step]
        model_output = guided_model_output(model, sample, timestep_tensor, labels, guidance_scale, num_classes)
        output = sampler.step(model_output.float(), timestep, sample, generator=generators)
        sample = output.prev_sample
        if callback is not None:
            callback(StepInfo(step, total, timestep, sample, output.pred_original_sample))
    return sample
