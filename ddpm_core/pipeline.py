"""The one generation loop: noise -> model -> sampler step, with classifier-free guidance.

Guidance follows Ho & Salimans (2022): eps = eps(x, y) + w (eps(x, y) - eps(x, null)); the
conditional and unconditional passes run as one batched forward, and w = 0 skips the second.
Each sample draws its noise from its own generator seeded with ``seed + i``, so a sample is
the same whatever else shares its batch.

The per-job state lives in :class:`Generation` (x_t, generators, labels, step index), which
asks for a forward and then :meth:`Generation.advance` s; :func:`generate` is the loop over one
generation, :func:`ddpm_core.batching.denoise_step` advances many with one shared forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from ddpm_core.errors import GenerationCancelled  # also importable from here, as before
from ddpm_core.sampler_specs import MAX_HISTORY, check_class_label
from ddpm_core.samplers import SamplerOutput, SpacedSampler, apply_step, randn_like
from ddpm_core.seeds import check_seed


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
        labels = [num_classes if label is None else check_class_label(label, num_classes) for label in class_labels]
        if len(labels) != num_samples:
            raise ValueError(f"{len(labels)} class labels for {num_samples} samples")
    return torch.tensor(labels, dtype=torch.long, device=device)


def sample_generators(
    seed: int | Sequence[int], num_samples: int, device: torch.device | str | None = None
) -> list[torch.Generator]:
    """One CPU generator per sample: seeds ``seed + i`` for an int, else the given seeds.

    The generators live on the CPU whatever the model's device (``device`` is accepted for
    callers that pass it and ignored): a sample's noise then depends only on its seed and step,
    never on its batch or on the device, so a seed gives the same sample on a CPU and a GPU
    worker (up to the model's float noise), and a checked sample's seed replays with the CLI."""
    if isinstance(seed, int):
        check_seed(seed, num_samples)  # seed + i never wraps around: ValueError, in one line
        seeds = [seed + i for i in range(num_samples)]
    else:
        seeds = [int(s) for s in seed]
    if len(seeds) != num_samples:
        raise ValueError(f"{len(seeds)} seeds for {num_samples} samples")
    return [torch.Generator(device="cpu").manual_seed(s % 2**63) for s in seeds]


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


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance row by row: eps = c + w (c - u); c, u (R, ...) float32, w (R,)
    float32 (a row with w = 0 and u = c keeps c exactly)."""
    return eps_cond + scale.view(-1, *([1] * (eps_cond.ndim - 1))) * (eps_cond - eps_uncond)


@dataclass
class ModelInputs:
    """One forward's inputs: ``sample`` (R, ...), ``timesteps`` (R,) long and ``class_labels``
    (R,) long or None (an unconditional model), all on the model's device."""

    sample: torch.Tensor
    timesteps: torch.Tensor
    class_labels: torch.Tensor | None


class Generation:
    """One job's reverse process as resumable state, advanced one step at a time.

    It holds x_t (B, *sample_shape), a multistep sampler's history, one generator per sample
    (``seed + i``), the labels and the step index; :meth:`model_inputs` says what the next
    forward needs, :meth:`advance` applies guidance and the sampler step. The network is called
    by the owner of the loop: :func:`generate` for one generation, :func:`ddpm_core.batching.denoise_step` for many
    generations sharing one forward. The sampler is only read (its timesteps must be set), so
    generations may share one.

    Attributes:
        sample: x_t, (B, *sample_shape) float32; after the last step, the final samples.
        history: (B, K, *sample_shape) float32, the multistep state (earlier predictions of x_0,
            UniPC's corrected sample), or None for a one-step sampler. Every multistep
            generation keeps K = :data:`~ddpm_core.sampler_specs.MAX_HISTORY` slots, so any
            mix of samplers shares one step (its own sampler uses the first ones).
        labels: (B,) long with the null label ``num_classes`` for unconditional rows, or None
            for an unconditional model.
        generators: B generators, row i's noise comes from generator i alone.
        step_index: steps done so far (0 .. total).
        total: the number of steps, ``len(sampler.timesteps)``.
        needs_unconditional: whether the forwards need the unconditional copy of every row:
            guidance_scale > 0 and a conditional model, and (with ``skip_null_unconditional``)
            at least one row with a real label.

    ``skip_null_unconditional``: when every row has the null label, c = u and the guided eps is
    the conditional one, so the unconditional copy is skipped (half the forward rows for an
    unconditional job with guidance). The result equals the guided one up to float noise (the
    forward's batch differs), so :func:`generate` turns it off to stay bit-identical to the
    loop it replaced; the batching engine turns it on.
    """

    def __init__(
        self,
        sampler: SpacedSampler,
        *,
        sample_shape: Sequence[int],
        num_samples: int | None = None,
        class_labels: Sequence[int | None] | torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        seed: int | Sequence[int] = 0,
        device: torch.device | str = "cpu",
        num_classes: int = 0,
        skip_null_unconditional: bool = False,
    ) -> None:
        if num_samples is None:
            if class_labels is None:
                raise ValueError("give num_samples or class_labels")
            num_samples = len(class_labels)
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        if guidance_scale < 0:
            raise ValueError("guidance_scale must be >= 0")
        device = torch.device(device)
        self.sampler = sampler
        self.sample_shape = tuple(int(size) for size in sample_shape)
        self.num_samples = int(num_samples)
        self.guidance_scale = float(guidance_scale)
        self.num_classes = int(num_classes)
        self.device = device
        # (B,) long on the host, for building a tick's rows without reading the device back
        self.host_labels = resolve_labels(class_labels, self.num_samples, self.num_classes, torch.device("cpu"))
        self.labels = None if self.host_labels is None else self.host_labels.to(device)
        self.generators = sample_generators(seed, self.num_samples, device)
        shape = (self.num_samples, *self.sample_shape)
        noise = randn_like(torch.empty(shape, device=device, dtype=torch.float32), self.generators)
        self.sample = noise * sampler.init_noise_sigma
        self.history_slots = MAX_HISTORY if sampler.history else 0
        self.history = (
            noise.new_zeros((self.num_samples, self.history_slots, *self.sample_shape)) if sampler.history else None
        )
        self._no_history: torch.Tensor | None = None
        self._timesteps = sampler.timesteps.to(device)  # one copy, then indexing: no per-step sync
        self._timestep_values = [int(t) for t in sampler.timesteps.tolist()]
        self.total = len(self._timestep_values)
        self.step_index = 0
        self.needs_unconditional = self.labels is not None and self.guidance_scale > 0
        if self.needs_unconditional and skip_null_unconditional:
            self.needs_unconditional = bool((self.host_labels != self.num_classes).any())

    @classmethod
    def for_model(cls, model: nn.Module, sampler: SpacedSampler, **options) -> Generation:
        """A generation on ``model``'s device with its ``num_classes``; options as the constructor."""
        device = next(model.parameters()).device
        return cls(sampler, device=device, num_classes=int(getattr(model, "num_classes", 0)), **options)

    @property
    def done(self) -> bool:
        return self.step_index >= self.total

    @property
    def timestep(self) -> int:
        """The next step's timestep (an int of ``sampler.timesteps``)."""
        self._check_not_done()
        return self._timestep_values[self.step_index]

    @property
    def forward_rows(self) -> int:
        """Rows this generation adds to the next forward: B, or 2B with the unconditional copy."""
        return self.num_samples * (2 if self.needs_unconditional else 1)

    def timesteps(self, rows: int | None = None) -> torch.Tensor:
        """The next timestep for each of ``rows`` rows (default B), a (rows,) long tensor."""
        self._check_not_done()
        return self._timesteps[self.step_index : self.step_index + 1].expand(rows or self.num_samples)

    def unconditional_labels(self) -> torch.Tensor | None:
        """(B,) null labels for the unconditional copy, or None for an unconditional model."""
        return None if self.labels is None else torch.full_like(self.labels, self.num_classes)

    def model_inputs(self) -> ModelInputs:
        """The next forward's inputs, (forward_rows, ...): the B conditional rows, then (only when
        :attr:`needs_unconditional`) the same B rows again with the null label."""
        if not self.needs_unconditional:
            return ModelInputs(self.sample, self.timesteps(), self.labels)
        return ModelInputs(
            torch.cat([self.sample, self.sample]),
            self.timesteps(2 * self.num_samples),
            torch.cat([self.labels, self.unconditional_labels()]),
        )

    def split_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A forward's output for :meth:`model_inputs`, (forward_rows, ...) -> (eps_cond, eps_uncond | None)."""
        if output.shape[0] != self.forward_rows:
            raise ValueError(f"model output has {output.shape[0]} rows, expected {self.forward_rows}")
        if not self.needs_unconditional:
            return output, None
        conditional, unconditional = output.chunk(2)
        return conditional, unconditional

    def step_coefficients(self, slots: int | None = None) -> tuple[float, ...]:
        """The sampler's row (:func:`ddpm_core.samplers.apply_step`) of the next step, written for
        ``slots`` history slots (default: this generation's :attr:`history_slots`)."""
        self._check_not_done()
        return self.sampler.step_coefficients(
            self._timestep_values[self.step_index], self.history_slots if slots is None else slots
        )

    def adds_noise(self) -> bool:
        """Whether the next step adds noise."""
        self._check_not_done()
        return self.sampler.adds_noise(self._timestep_values[self.step_index])

    def history_rows(self, slots: int) -> torch.Tensor:
        """The history for a step with ``slots`` slots, (B, slots, *sample_shape): :attr:`history`,
        or zeros that are never written (a one-step sampler beside multistep ones)."""
        if self.history is not None:
            return self.history
        if self._no_history is None or self._no_history.shape[1] != slots:
            zeros = self.sample.new_zeros((1, slots, *self.sample_shape))
            self._no_history = zeros.expand(self.num_samples, *zeros.shape[1:])
        return self._no_history

    def fill_noise(self, out: torch.Tensor) -> bool:
        """Draw the next step's noise into ``out`` (B, prod(sample_shape)) float32 on the CPU,
        row i from generator i; False (and ``out`` zeroed) when the step adds none.

        Each row is one draw of its own generator, so a sample's noise depends only on its seed
        and its step, never on its batch or on the device."""
        if not self.adds_noise():
            out.zero_()
            return False
        for row, generator in zip(out, self.generators, strict=True):
            torch.randn(row.shape, generator=generator, dtype=row.dtype, out=row)
        return True

    def commit(self, output: SamplerOutput) -> StepInfo:
        """Take a step's result: x_{t-1} (B, ...) becomes :attr:`sample` (and the new history,
        for a multistep sampler); the step's :class:`StepInfo`."""
        self._check_not_done()
        timestep = self._timestep_values[self.step_index]
        self.sample = output.prev_sample
        if self.history is not None:
            self.history = output.history
        self.step_index += 1
        return StepInfo(self.step_index, self.total, timestep, self.sample, output.pred_original_sample)

    def advance(self, eps_cond: torch.Tensor, eps_uncond: torch.Tensor | None = None) -> StepInfo:
        """Apply guidance, eps = c + w (c - u), and one sampler step with the per-sample generators.

        The same operations as a shared tick (:func:`ddpm_core.batching.denoise_step`) does for
        this generation's rows, so the two give bit-identical samples.

        Args:
            eps_cond: the conditional (or unconditional model's) eps, (B, *sample_shape).
            eps_uncond: eps with the null label, (B, *sample_shape); given exactly when
                :attr:`needs_unconditional`.
        Returns:
            The step's :class:`StepInfo` (x_{t-1} is also the new :attr:`sample`).
        """
        self._check_not_done()
        expected = (self.num_samples, *self.sample_shape)
        if tuple(eps_cond.shape) != expected:
            raise ValueError(f"eps_cond has shape {tuple(eps_cond.shape)}, expected {expected}")
        if (eps_uncond is not None) != self.needs_unconditional:
            raise ValueError("eps_uncond must be given exactly when the generation needs the unconditional pass")
        model_output = eps_cond.float()
        if eps_uncond is not None:
            if tuple(eps_uncond.shape) != expected:
                raise ValueError(f"eps_uncond has shape {tuple(eps_uncond.shape)}, expected {expected}")
            scale = torch.full((self.num_samples,), self.guidance_scale, dtype=torch.float32, device=self.device)
            model_output = guided_eps(model_output, eps_uncond.float(), scale)
        coefficients = self.step_coefficients()
        noise = torch.empty((self.num_samples, prod(self.sample_shape)), dtype=torch.float32)
        has_noise = self.fill_noise(noise)
        noise_rows = noise.view(expected) if has_noise else None
        rows = torch.tensor(coefficients, dtype=torch.float32).expand(self.num_samples, -1).to(self.device)
        return self.commit(apply_step(model_output, self.sample, rows, noise_rows, self.history))

    def _check_not_done(self) -> None:
        if self.done:
            raise RuntimeError(f"the generation is done ({self.total} of {self.total} steps)")


@torch.inference_mode()
def generate(
    model: nn.Module,
    sampler: SpacedSampler,
    *,
    sample_shape: Sequence[int],
    num_samples: int | None = None,
    class_labels: Sequence[int | None] | torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    seed: int | Sequence[int] = 0,
    callback: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise to samples: a loop over one :class:`Generation`.

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
    generation = Generation.for_model(
        model,
        sampler,
        sample_shape=sample_shape,
        num_samples=num_samples,
        class_labels=class_labels,
        guidance_scale=guidance_scale,
        seed=seed,
    )
    while not generation.done:
        if should_stop is not None and should_stop():
            raise GenerationCancelled(generation.step_index, generation.total)
        inputs = generation.model_inputs()
        output = model(inputs.sample, inputs.timesteps, inputs.class_labels)
        info = generation.advance(*generation.split_output(output))
        if callback is not None:
            callback(info)
    return generation.sample
