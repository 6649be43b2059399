"""Step-level batching: many :class:`~ddpm_core.pipeline.Generation` s advanced by one forward.

Each generation is a job at its own step of its own sampler (DDPM over all T steps, DDIM and the
multistep solvers with any step count), with its own labels, guidance scale, seeds and (multistep
samplers) history. One call of
:func:`denoise_step` concatenates every generation's conditional rows and, only for the
generations that need it, their unconditional copies (null label ``num_classes``) into one
batch with per-row timesteps and labels, runs the network once, splits the output and advances
each generation with its own sampler and generators. A sample's result does not depend on what
else shares its forward, up to float noise (the network works row by row: convolutions,
GroupNorm and attention are per sample).

Row layout of the shared forward, for generations g_1 .. g_k with B_i samples each::

    [ cond(g_1) | cond(g_2) | ... | cond(g_k) | uncond(g_i) for each g_i that needs it ]

so a single generation gets exactly the rows :func:`ddpm_core.pipeline.generate` gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import torch

from ddpm_core.pipeline import Generation, StepInfo, guided_eps
from ddpm_core.sampler_specs import MAX_HISTORY
from ddpm_core.samplers import SamplerOutput, apply_step, row_width

Forward = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``forward(sample (R, ...), timesteps (R,) long, class_labels (R,) long | None) -> eps (R, ...)``:
the model itself, or a wrapper such as :class:`ddpm_core.compiled.BucketedForward`."""


def forward_rows(generations: Sequence[Generation]) -> int:
    """Rows the next shared forward of ``generations`` has: the sum of their ``forward_rows``."""
    return sum(generation.forward_rows for generation in generations)


def batch_inputs(
    generations: Sequence[Generation],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The shared forward's inputs in the row layout of the module docstring.

    Returns:
        sample (R, *sample_shape) float32, timesteps (R,) long, class_labels (R,) long or None
        (when the model is unconditional), where R = :func:`forward_rows`.
    """
    if not generations:
        raise ValueError("no generations to batch")
    if len(generations) == 1:
        inputs = generations[0].model_inputs()
        return inputs.sample, inputs.timesteps, inputs.class_labels
    _check_can_share(generations)
    conditional_model = generations[0].labels is not None
    guided = [generation for generation in generations if generation.needs_unconditional]
    samples = [generation.sample for generation in (*generations, *guided)]
    timesteps = [generation.timesteps() for generation in generations] + [
        generation.timesteps() for generation in guided
    ]
    labels = None
    if conditional_model:
        labels = torch.cat(
            [generation.labels for generation in generations]
            + [generation.unconditional_labels() for generation in guided]
        )
    return torch.cat(samples), torch.cat(timesteps), labels


def run_forward(
    forward: Forward,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None,
    max_batch: int | None = None,
) -> torch.Tensor:
    """``forward`` over (R, ...) rows, in consecutive chunks of at most ``max_batch`` rows when
    R exceeds it (activation memory stays bounded for an oversized job); -> (R, ...)."""
    rows = sample.shape[0]
    if max_batch is None or rows <= max_batch:
        return forward(sample, timesteps, class_labels)
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    outputs = []
    for start in range(0, rows, max_batch):
        end = min(start + max_batch, rows)
        labels = None if class_labels is None else class_labels[start:end]
        outputs.append(forward(sample[start:end], timesteps[start:end], labels))
    return torch.cat(outputs)


class HostStaging:
    """A reusable host buffer for a tick's upload or download (pinned when the device is a GPU,
    so copies from or to it are asynchronous); grown as needed, never shrunk.

    A caller reuses it only once the previous copy through it has finished (a tick waits for
    its end before the next starts)."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def take(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A 1-D host tensor of ``numel`` elements (contents undefined)."""
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(max(numel, 1024), dtype=dtype, pin_memory=self.pin)
            self._buffers[dtype] = buffer
        return buffer[:numel]


@dataclass
class TickRows:
    """One tick's per-row tables, copied to the device in one copy (all small integers are
    exact in float32). R_f forward rows, R_c conditional rows (one per sample), D = prod(sample_shape).

    Attributes:
        timesteps: (R_f,) long, each forward row's timestep.
        labels: (R_f,) long, or None for an unconditional model.
        unconditional_rows: (R_u,) long, the conditional rows copied (with the null label) to
            forward rows R_c .. R_f - 1; None when no row is guided.
        unconditional_of: (R_c,) long, the forward row of each row's unconditional eps (its own
            row when it has none); None when no row is guided.
        guidance: (R_c,) float32, each row's w (0 for unguided rows).
        coefficients: (R_c, W) float32, each row's step row for ``slots`` history slots.
        noise: (R_c, *sample_shape) float32, or None when no row adds noise.
        slots: history slots of the tick: 0 when every generation is one-step, else
            :data:`~ddpm_core.sampler_specs.MAX_HISTORY`.
    """

    timesteps: torch.Tensor
    labels: torch.Tensor | None
    unconditional_rows: torch.Tensor | None
    unconditional_of: torch.Tensor | None
    guidance: torch.Tensor
    coefficients: torch.Tensor
    noise: torch.Tensor | None
    slots: int = 0


def tick_slots(generations: Sequence[Generation]) -> int:
    """History slots of a step over ``generations``: 0 when none keeps history, else
    :data:`~ddpm_core.sampler_specs.MAX_HISTORY` (what every multistep generation keeps)."""
    return MAX_HISTORY if any(generation.history is not None for generation in generations) else 0


def plan_rows(
    generations: Sequence[Generation],
    device: torch.device,
    staging: HostStaging | None = None,
    coefficients: Sequence[Sequence[float]] | None = None,
    slots: int | None = None,
) -> TickRows:
    """Every generation's rows of the next tick, built on the host (noise drawn there from each
    sample's generator, :func:`host_rows`) and copied to ``device`` in ONE copy.

    The host work is a loop over generations; nothing launched on the device depends on their number."""
    if slots is None:
        slots = tick_slots(generations)
    host, sizes, has_labels, adds_noise = host_rows(generations, staging, coefficients, slots)
    shape = generations[0].sample_shape
    conditional = sum(generation.num_samples for generation in generations)
    on_device = host.to(device, non_blocking=True)
    timesteps, labels, unconditional_rows, unconditional_of, guidance, coefficients, noise = on_device.split(sizes)
    unconditional = sizes[2] > 0
    return TickRows(
        timesteps=timesteps.long(),
        labels=labels.long() if has_labels else None,
        unconditional_rows=unconditional_rows.long() if unconditional else None,
        unconditional_of=unconditional_of.long() if unconditional else None,
        guidance=guidance,
        coefficients=coefficients.view(conditional, row_width(slots)),
        noise=noise.view(conditional, *shape) if adds_noise else None,
        slots=slots,
    )


def host_rows(
    generations: Sequence[Generation],
    staging: HostStaging | None = None,
    coefficients: Sequence[Sequence[float]] | None = None,
    slots: int | None = None,
) -> tuple[torch.Tensor, list[int], bool, bool]:
    """The host side of :func:`plan_rows`: every table in one float32 host tensor; with its
    parts' sizes, whether the model has labels and whether any row adds noise. ``coefficients``:
    each generation's step row for ``slots`` history slots (default: :func:`tick_slots`)."""
    width = prod(generations[0].sample_shape)
    has_labels = generations[0].labels is not None
    if slots is None:
        slots = tick_slots(generations)
    rows = list(coefficients) if coefficients is not None else [g.step_coefficients(slots) for g in generations]
    noisy = [generation.adds_noise() for generation in generations]
    adds_noise = any(noisy)
    conditional = sum(generation.num_samples for generation in generations)
    any_guided = any(generation.needs_unconditional for generation in generations)
    timesteps: list[float] = []  # the conditional rows', then the unconditional copies'
    labels: list[float] = []
    copy_timesteps: list[float] = []
    copy_labels: list[float] = []
    copied_rows: list[int] = []  # the conditional row of each unconditional copy
    unconditional_of: list[int] = []  # each conditional row's unconditional forward row (itself if none)
    guidance: list[float] = []
    coefficient_values: list[float] = []
    start = 0
    for generation, row in zip(generations, rows, strict=True):
        count, needs = generation.num_samples, generation.needs_unconditional
        own = range(start, start + count)
        timesteps += [float(generation.timestep)] * count
        guidance += [generation.guidance_scale if needs else 0.0] * count
        coefficient_values += list(row) * count
        if has_labels:
            labels += generation.host_labels.tolist()
        if needs:
            first_copy = conditional + len(copied_rows)
            unconditional_of += range(first_copy, first_copy + count)
            copied_rows += own
            copy_timesteps += [float(generation.timestep)] * count
            copy_labels += [float(generation.num_classes)] * count
        else:
            unconditional_of += own
        start += count
    # layout: timesteps | labels | unconditional rows | unconditional of | guidance | coefficients | noise
    tables = [timesteps + copy_timesteps, labels + copy_labels if has_labels else [], copied_rows]
    tables += [unconditional_of if any_guided else [], guidance, coefficient_values]
    sizes = [len(table) for table in tables] + [conditional * width if adds_noise else 0]
    host = (staging or HostStaging(pin=False)).take(sum(sizes), torch.float32)
    filled = sum(sizes[:-1])
    host[:filled] = torch.tensor([value for table in tables for value in table], dtype=torch.float32)
    if adds_noise:
        noise = host[filled:].view(conditional, width)
        start = 0
        for generation, has_noise in zip(generations, noisy, strict=True):
            rows_of_generation = noise[start : start + generation.num_samples]
            if has_noise:
                generation.fill_noise(rows_of_generation)
            else:
                rows_of_generation.zero_()
            start += generation.num_samples
    return host, sizes, has_labels, adds_noise


def _check_can_share(generations: Sequence[Generation]) -> None:
    first = generations[0]
    for generation in generations:
        if (generation.labels is not None) != (first.labels is not None):
            raise ValueError("generations of a conditional and an unconditional model cannot share a forward")
        if generation.sample_shape != first.sample_shape or generation.device != first.device:
            raise ValueError("generations in one forward must have the same sample shape and device")


@torch.inference_mode()
def denoise_step(
    generations: Sequence[Generation],
    forward: Forward,
    *,
    max_batch: int | None = None,
    return_exceptions: bool = False,
    staging: HostStaging | None = None,
) -> list[StepInfo | BaseException]:
    """Advance every generation by one step with one shared forward and one vectorised step.

    The rows' timesteps, labels, guidance scales, step coefficients and noise travel to the
    device in one copy (:func:`plan_rows`); the forward sees the row layout of the module
    docstring; guidance and the sampler step (:func:`ddpm_core.samplers.apply_step`) run once
    over all rows, so the kernels launched do not grow with the number of generations.

    Args:
        generations: generations of one model (same sample shape, device and conditioning);
            each may use a different sampler, step count, step index, labels, guidance and seeds.
        forward: ``forward(sample (R, ...), timesteps (R,), class_labels (R,) | None) -> (R, ...)``,
            e.g. the model or a :class:`ddpm_core.compiled.BucketedForward`.
        max_batch: when given and R exceeds it, the forward runs in chunks of at most this
            many rows (see :func:`run_forward`).
        return_exceptions: when True, a generation that cannot take a step (it is done, its
            sampler has no such step) gets its error in its place instead of raising, and the
            others still advance (an error of the forward or of the shared step is always
            raised: no generation advanced).
        staging: the host buffer for the upload (pinned on a GPU); a fresh one when None.
    Returns:
        One :class:`StepInfo` per generation, in order (or its exception, see above); its
        tensors are views of the tick's (R_c, ...) results.
    """
    if not generations:
        raise ValueError("no generations to batch")
    _check_can_share(generations)
    results: list[StepInfo | BaseException | None] = [None] * len(generations)
    stepping: list[Generation] = []
    coefficients: list[tuple[float, ...]] = []
    slots = tick_slots([generation for generation in generations if not generation.done])
    for index, generation in enumerate(generations):
        try:
            coefficients.append(generation.step_coefficients(slots))  # raises when it is done
        except Exception as error:
            if not return_exceptions:
                raise
            results[index] = error
            continue
        stepping.append(generation)
    if not stepping:
        return results  # type: ignore[return-value]
    device = stepping[0].device
    rows = plan_rows(stepping, device, staging, coefficients, slots)
    sample = _joined([generation.sample for generation in stepping])
    history = _joined([generation.history_rows(slots) for generation in stepping]) if slots else None
    conditional = sample.shape[0]
    forward_sample = sample
    if rows.unconditional_rows is not None:
        forward_sample = torch.cat([sample, sample.index_select(0, rows.unconditional_rows)])
    output = run_forward(forward, forward_sample, rows.timesteps, rows.labels, max_batch)
    if output.shape[0] != forward_sample.shape[0]:
        raise ValueError(f"forward returned {output.shape[0]} rows for {forward_sample.shape[0]}")
    eps = output[:conditional].float()
    if rows.unconditional_of is not None:
        eps = guided_eps(eps, output.index_select(0, rows.unconditional_of).float(), rows.guidance)
    stepped = apply_step(eps, sample, rows.coefficients, rows.noise, history)
    counts = [generation.num_samples for generation in stepping]
    histories = stepped.history.split(counts) if stepped.history is not None else [None] * len(stepping)
    infos = iter(
        generation.commit(SamplerOutput(prev, pred, kept))
        for generation, prev, pred, kept in zip(
            stepping,
            stepped.prev_sample.split(counts),
            stepped.pred_original_sample.split(counts),
            histories,
            strict=True,
        )
    )
    return [result if result is not None else next(infos) for result in results]


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated along rows (one copy), or the one tensor itself."""
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]
