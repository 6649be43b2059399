"""Step-level batching: many :class:`~ddpm_core.pipeline.Generation` s advanced by one forward.

Each generation is a job at its own step of its own sampler (DDPM over all T steps, DDIM with
any step count), with its own labels, guidance scale and seeds. One call of
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

import torch

from ddpm_core.pipeline import Generation, StepInfo

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
    first = generations[0]
    conditional_model = first.labels is not None
    for generation in generations:
        if (generation.labels is not None) != conditional_model:
            raise ValueError("generations of a conditional and an unconditional model cannot share a forward")
        if generation.sample_shape != first.sample_shape or generation.device != first.device:
            raise ValueError("generations in one forward must have the same sample shape and device")
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


@torch.inference_mode()
def denoise_step(
    generations: Sequence[Generation],
    forward: Forward,
    *,
    max_batch: int | None = None,
    return_exceptions: bool = False,
) -> list[StepInfo | BaseException]:
    """Advance every generation by one step with one shared forward.

    Args:
        generations: generations that are not done, all of one model (same sample shape,
            device and conditioning); each may use a different sampler, step count, step
            index, labels, guidance scale and seeds.
        forward: ``forward(sample (R, ...), timesteps (R,), class_labels (R,) | None) -> (R, ...)``,
            e.g. the model or a :class:`ddpm_core.compiled.BucketedForward`.
        max_batch: when given and R exceeds it, the forward runs in chunks of at most this
            many rows (see :func:`run_forward`).
        return_exceptions: when True, an error while advancing one generation is returned in
            its place instead of raised, and the others still advance (an error of the
            forward itself is always raised: no generation advanced).
    Returns:
        One :class:`StepInfo` per generation, in order (or its exception, see above).
    """
    sample, timesteps, labels = batch_inputs(generations)
    output = run_forward(forward, sample, timesteps, labels, max_batch)
    if output.shape[0] != sample.shape[0]:
        raise ValueError(f"forward returned {output.shape[0]} rows for {sample.shape[0]}")
    results: list[StepInfo | BaseException] = []
    conditional_start = 0
    unconditional_start = sum(generation.num_samples for generation in generations)
    for generation in generations:
        rows = generation.num_samples
        eps_cond = output[conditional_start : conditional_start + rows]
        conditional_start += rows
        eps_uncond = None
        if generation.needs_unconditional:
            eps_uncond = output[unconditional_start : unconditional_start + rows]
            unconditional_start += rows
        try:
            results.append(generation.advance(eps_cond, eps_uncond))
        except Exception as error:
            if not return_exceptions:
                raise
            results.append(error)
    return results
