"""The engine's output side: what each job takes home from a tick, copied to the host once.

A job submitted with an :class:`~worker.engine.request_state.OutputPlan` says which of its steps it
wants on the host: GIF frames (x_t beside the predicted x_0), previews (x_0), and its final
samples with a reading of them (the classifier's label and confidence of each sample, run on
the device). At each tick the engine gathers every due tensor of every job into ONE uint8
tensor on the device (images as 8-bit (H, W, C) pixels, points and readings as the bytes of
their float32 values), copies it to a pinned host buffer with one non-blocking copy and one
event, and hands each job plain numpy arrays (:class:`~worker.engine.request_state.HostStep`,
:class:`~worker.engine.request_state.HostResult`). The job's own thread then never touches torch or
the device: it encodes PNGs and GIFs and writes to Redis.

The number of kernels launched and copies made per tick does not depend on how many jobs or
items are due (a concatenation, one conversion, one copy), except one reading per finishing
job that asked for one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np
import torch

from ddpm_core.batching import HostStaging
from ddpm_core.pipeline import StepInfo
from ddpm_core.render import uint8_pixels
from worker.engine.request_state import HostResult, HostStep, LiveJob, OutputPlan


@dataclass
class _Slot:
    rows: int
    readings: bool


@dataclass
class TickOutputs:
    """One tick's due tensors; :meth:`copy_to_host` brings them all over in one copy.

    Args:
        sample_shape: one sample's shape; (2,) is points (kept as float32), else (C, H, W)
            images (copied as uint8 pixels).
        staging: the host buffer the copy lands in (pinned on a GPU).
    """

    sample_shape: tuple[int, ...]
    staging: HostStaging
    _samples: list[torch.Tensor] = field(default_factory=list)
    _readings: list[torch.Tensor] = field(default_factory=list)
    _slots: list[_Slot] = field(default_factory=list)

    @property
    def is_points(self) -> bool:
        return self.sample_shape == (2,)

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, samples: torch.Tensor) -> int:
        """Queue samples (m, *sample_shape) for the copy; their slot."""
        self._samples.append(samples)
        self._slots.append(_Slot(samples.shape[0], readings=False))
        return len(self._slots) - 1

    def add_readings(self, readings: torch.Tensor) -> int:
        """Queue readings (m, k) for the copy (as float32); their slot."""
        self._readings.append(readings.float().reshape(readings.shape[0], -1))
        self._slots.append(_Slot(readings.shape[0], readings=True))
        return len(self._slots) - 1

    def _sample_bytes(self) -> torch.Tensor | None:
        if not self._samples:
            return None
        samples = torch.cat(self._samples) if len(self._samples) > 1 else self._samples[0]
        if self.is_points:
            return samples.float().contiguous().view(torch.uint8).reshape(-1)
        return uint8_pixels(samples).reshape(-1)

    def copy_to_host(self) -> list[np.ndarray]:
        """Every slot's host array, in slot order, after ONE device-to-host copy (waited for).

        Images come back as uint8 (m, H, W, C), points as float32 (m, 2), readings as float32 (m, k)."""
        if not self._slots:
            return []
        parts = [part for part in (self._sample_bytes(), self._reading_bytes()) if part is not None]
        device_bytes = torch.cat(parts) if len(parts) > 1 else parts[0]
        host = self.staging.take(device_bytes.numel(), torch.uint8)
        if device_bytes.device.type == "cuda":
            host.copy_(device_bytes, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            done.synchronize()
        else:
            host.copy_(device_bytes)
        return self._split(host.numpy())

    def _reading_bytes(self) -> torch.Tensor | None:
        if not self._readings:
            return None
        widths = {readings.shape[1] for readings in self._readings}
        readings = [r if r.shape[1] == max(widths) else _pad(r, max(widths)) for r in self._readings]
        return torch.cat(readings).contiguous().view(torch.uint8).reshape(-1)

    def _split(self, data: np.ndarray) -> list[np.ndarray]:
        if self.is_points:
            per_row, dtype, shape = 4 * prod(self.sample_shape), np.float32, self.sample_shape
        else:
            channels, height, width = self.sample_shape
            per_row, dtype, shape = channels * height * width, np.uint8, (height, width, channels)
        reading_width = max((r.shape[1] for r in self._readings), default=0)
        sample_offset = 0
        reading_offset = sum(slot.rows for slot in self._slots if not slot.readings) * per_row
        arrays = []
        for slot in self._slots:
            if slot.readings:
                size = slot.rows * reading_width * 4
                chunk = data[reading_offset : reading_offset + size]
                arrays.append(np.frombuffer(chunk.tobytes(), np.float32).reshape(slot.rows, reading_width))
                reading_offset += size
            else:
                size = slot.rows * per_row
                chunk = data[sample_offset : sample_offset + size]
                arrays.append(np.frombuffer(chunk.tobytes(), dtype).reshape(slot.rows, *shape))
                sample_offset += size
        return arrays


def _pad(readings: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(readings, (0, width - readings.shape[1]))


@dataclass(frozen=True)
class JobOutput:
    """What one job takes home from a tick: its step as host data, and its result when it finished."""

    step: HostStep
    result: HostResult | None = None


class OutputProcessor:
    """Turns a tick's steps into host data with one copy (see the module docstring).

    Args:
        sample_shape: one sample's shape ((2,): points).
        device: the model's device (a pinned staging buffer on a GPU).
    """

    def __init__(self, sample_shape: tuple[int, ...], device: torch.device) -> None:
        self.sample_shape = tuple(sample_shape)
        self.staging = HostStaging(pin=device.type == "cuda")
        self.copies = 0
        self.bytes = 0

    def for_jobs(self, running: list[LiveJob], results: list[StepInfo | BaseException]) -> dict[int, JobOutput]:
        """A tick's host data of every running job that asked for some (its plan), by job id."""
        wanting = [
            (live, result)
            for live, result in zip(running, results, strict=True)
            if live.outputs is not None and not isinstance(result, BaseException)
        ]
        if not wanting:
            return {}
        taken = self.process([(live.outputs, result, live.generation.done) for live, result in wanting])
        return {live.job.id: job_output for (live, _), job_output in zip(wanting, taken, strict=True)}

    def process(self, steps: list[tuple[OutputPlan, StepInfo, bool]]) -> list[JobOutput]:
        """``steps``: per job its plan, its step (device tensors) and whether it is done; the
        jobs' outputs, in order. A reader that fails leaves that job's readings None and its
        ``reading_error`` set (the job itself is not failed by it)."""
        outputs = TickOutputs(self.sample_shape, self.staging)
        slots: list[tuple[int | None, int | None, int | None, str | None, bool]] = []
        for plan, info, done in steps:
            want_sample, want_prediction = plan.captures(info.step, info.total)
            sample_slot = outputs.add(info.sample) if want_sample or done else None
            prediction_slot = outputs.add(info.pred_original_sample) if want_prediction else None
            reading_slot, reading_error = None, None
            if done and plan.reader is not None:
                try:
                    reading_slot = outputs.add_readings(plan.reader(info.sample))
                except Exception as error:  # the samples stand; their check says why it is missing
                    reading_error = f"{type(error).__name__}: {error}"
            slots.append((sample_slot, prediction_slot, reading_slot, reading_error, want_sample))
        arrays = outputs.copy_to_host()
        if len(outputs):
            self.copies += 1
            self.bytes += sum(array.nbytes for array in arrays)
        results = []
        for (_plan, info, done), (sample_slot, prediction_slot, reading_slot, error, want_sample) in zip(
            steps, slots, strict=True
        ):
            sample = None if sample_slot is None else arrays[sample_slot]
            step = HostStep(
                info.step,
                info.total,
                info.timestep,
                sample if want_sample else None,
                None if prediction_slot is None else arrays[prediction_slot],
            )
            result = None
            if done:
                readings = None if reading_slot is None else arrays[reading_slot]
                result = HostResult(sample, readings, error)
            results.append(JobOutput(step, result))
        return results
