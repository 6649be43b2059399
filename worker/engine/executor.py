"""The engine's model side, in torch: a job's :class:`~ddpm_core.pipeline.Generation` from its
request (:meth:`StepExecutor.prepare`, which checks the request) and one tick, the shared
forward and vectorised sampler step of every running job (:meth:`StepExecutor.step`, over
:func:`ddpm_core.batching.denoise_step`), timed on its device (:class:`TickTimer`).

It decides nothing about which jobs run (:mod:`worker.engine.scheduler` does) and keeps no job: the
engine hands it the generations of the running jobs at each tick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ddpm_core.batching import Forward, HostStaging, denoise_step
from ddpm_core.compiled import dummy_inputs
from ddpm_core.pipeline import Generation, StepInfo
from ddpm_core.sampler_specs import DDIM, check_class_label
from ddpm_core.samplers import SpacedSampler, make_sampler
from ddpm_core.schedule import NoiseSchedule
from worker.engine.request_state import EngineRequest


@dataclass
class TickOutput:
    """One tick: per generation its :class:`StepInfo` or its error (in order) and the forward
    calls it took (more than one when its rows ran in chunks)."""

    results: list[StepInfo | BaseException]
    forward_calls: int
    forward_seconds: float = 0.0  # wall seconds inside the forward (on a GPU: launching it)


class TickTimer:
    """The seconds of a tick's work on its device: wall time on a CPU; on CUDA, events around the
    tick's kernels (the work is asynchronous), read once the tick has been waited for."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._started = 0.0
        self._start = self._end = None

    def start(self) -> None:
        if self._cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._started = time.perf_counter()

    def stop(self) -> float:
        """The seconds since :meth:`start`; on CUDA this waits for the tick's last kernel."""
        if not self._cuda:
            return time.perf_counter() - self._started
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1000


class StepExecutor:
    """Builds generations for one model and advances them, one shared forward per tick.

    Args:
        schedule: the model's training noise schedule (samplers are built from it).
        sample_shape: one sample's shape.
        device: the model's device (where generations keep their samples).
        num_classes: the model's classes (0: unconditional).
        max_batch: rows per forward call; more rows run in chunks of at most this many.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        sample_shape: tuple[int, ...],
        device: torch.device,
        num_classes: int,
        max_batch: int,
    ) -> None:
        self.schedule = schedule
        self.sample_shape = sample_shape
        self.device = device
        self.num_classes = num_classes
        self.max_batch = max_batch
        self._samplers: dict[tuple[str, int | None, float], SpacedSampler] = {}
        self._samplers_lock = threading.Lock()
        self._upload = HostStaging(pin=device.type == "cuda")  # reused: each tick waits for its end

    def prepare(self, request: EngineRequest) -> Generation:
        """The request's generation, at step 0 (any thread).

        Raises:
            ValueError: a bad request (unknown sampler, step count, label out of range, ...).
        """
        if request.n < 1:
            raise ValueError("n must be at least 1")
        if request.eta and request.sampler != DDIM.name:
            raise ValueError(f"eta is for the {DDIM.name} sampler only")
        if request.time_limit_s is not None and request.time_limit_s <= 0:
            raise ValueError("time_limit_s must be positive")
        if request.seeds is not None and len(request.seeds) != request.n:
            raise ValueError(f"{len(request.seeds)} seeds for {request.n} samples")
        labels = request.class_labels()
        for label in labels or ():
            if label is not None:  # the null label num_classes is spelt None here
                check_class_label(label, self.num_classes)
        return Generation(
            self.sampler(request.sampler, request.steps, request.eta),
            sample_shape=self.sample_shape,
            num_samples=request.n,
            class_labels=labels,
            guidance_scale=request.guidance,
            seed=request.seed if request.seeds is None else [int(seed) for seed in request.seeds],
            device=self.device,
            num_classes=self.num_classes,
            skip_null_unconditional=True,
        )

    def sampler(self, name: str, steps: int | None, eta: float) -> SpacedSampler:
        """Samplers are read-only once their timesteps are set, so jobs share them (and their
        tables of step rows)."""
        key = (name, steps, float(eta))
        with self._samplers_lock:
            sampler = self._samplers.get(key)
        if sampler is None:
            options = {"eta": float(eta)} if name == DDIM.name else {}
            sampler = make_sampler(name, self.schedule, steps, **options)
            with self._samplers_lock:
                sampler = self._samplers.setdefault(key, sampler)
        return sampler

    def probe(self, model: torch.nn.Module) -> float:
        """Run ``model`` once, eagerly, on one dummy sample (proves that it runs before jobs are
        sent to it); the seconds it took."""
        started = time.perf_counter()
        sample, timesteps, labels = dummy_inputs(1, self.sample_shape, self.num_classes, self.device)
        model(sample, timesteps, labels)
        return time.perf_counter() - started

    def step(self, generations: Sequence[Generation], forward: Forward) -> TickOutput:
        """Advance every generation by one step with one shared ``forward`` and one vectorised
        sampler step; the rows' tables go to the device in one copy (through a pinned buffer on
        a GPU). Nothing here waits for the device.

        Raises:
            Exception: the forward's error (no generation advanced); an error of one
                generation's own step is in its place in ``results`` instead.
        """
        forward_calls = 0
        forward_seconds = 0.0

        def counted_forward(sample: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None):
            nonlocal forward_calls, forward_seconds
            forward_calls += 1
            started = time.perf_counter()
            try:
                return forward(sample, timesteps, labels)
            finally:
                forward_seconds += time.perf_counter() - started

        results = denoise_step(
            generations, counted_forward, max_batch=self.max_batch, return_exceptions=True, staging=self._upload
        )
        return TickOutput(results, forward_calls, forward_seconds)


def is_fatal_device_error(error: BaseException) -> bool:
    """Whether ``error`` leaves the device unusable: a CUDA error other than running out of
    memory is sticky (every later kernel fails too), so the process must end and be restarted;
    an out-of-memory error fails its tick only."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("CUDA error" in message or "CUBLAS_STATUS" in message)
