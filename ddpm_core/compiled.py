"""A forward wrapper for serving: batches padded to a few bucket sizes, optionally compiled.

:class:`BucketedForward` wraps eps_theta(x, t, y) with the signature of
:data:`ddpm_core.batching.Forward`. It pads every batch up to the smallest bucket that holds it
(zeros for x, timestep 0, the null label), so ``torch.compile`` sees only the bucket sizes and
never recompiles as the number of jobs in flight changes; a batch larger than the largest
bucket runs in chunks of that size. Padded rows never change the real rows' results beyond
float noise: every layer of the U-Net works per sample (convolutions, GroupNorm, attention
over one sample's positions, the embeddings).

Options, resolved per device by :func:`resolve_forward_options` (a pure function, testable
without the device):

- CPU: float32 only (bf16 measured 5-20x slower on the 2-core CPU this was built on); compile
  with inductor's default mode and ``freezing`` (weights folded into the graph as constants).
  ``benchmarks/bench_engine.py`` measured, on that CPU: default mode 1.1-1.7x eager; freezing
  3-5% faster than without it, though a warm-cache restart then compiles each bucket in about
  11 s instead of 1-2 s (cold, both take 20-30 s); 'max-autotune-no-cudagraphs' no faster
  than the default without freezing and 9x slower with it.
- CUDA: bf16 autocast where the device computes bf16 natively (fp16 elsewhere) and
  ``mode="reduce-overhead"`` (CUDA graphs: one graph per bucket, replayed without per-kernel
  launch cost); outputs are copied out of the graph's memory before the next replay.

A bucket runs compiled code only once it has some: :meth:`BucketedForward.warmup` compiles and
runs a bucket in process (three times under CUDA graphs: warm-up, recording, a first replay),
and :meth:`BucketedForward.install` swaps in a forward built elsewhere (an AOTInductor package
of :mod:`ddpm_core.aot`). Until then a batch of that size runs eagerly, unpadded, so a worker
serves at once and compiles in the background (``worker/compiler.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_COMPILE_MODE: str | None = None  # inductor's default; see the module docstring
CPU_FREEZING = True
CUDA_COMPILE_MODE = "reduce-overhead"
DEFAULT_MAX_BATCH = {"cpu": 64, "cuda": 256}
"""Default bucket cap in forward rows (unconditional copies included) per device type. CPU:
64, chosen with ``benchmarks/bench_engine.py`` on the 2-core CPU with the MNIST U-Net: image
throughput rises up to 64 rows (about 1200 img/s eager, 1400 compiled) and falls at 128 (640
and 1040), and a 64-row tick takes about 50 ms. CUDA: a suggestion for small U-Nets like the
MNIST one, not measured here (a GPU keeps gaining from larger batches well past 64 rows)."""

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ForwardOptions:
    """Resolved settings of a :class:`BucketedForward` (see :func:`resolve_forward_options`).

    Attributes:
        device_type: 'cpu', 'cuda', ...
        compile: whether ``torch.compile`` is used.
        mode: the compile mode (None: inductor's default), or None when not compiling.
        freezing: inductor ``freezing`` while compiling.
        dtype: the compute dtype: float32, or bfloat16/float16 autocast (CUDA only).
        cudagraphs: whether the compiled forward replays CUDA graphs (outputs are copied out).
        buckets: the padded batch sizes, ascending; empty: no padding (eager).
        max_batch: the largest bucket (rows per forward call; more rows run in chunks).
    """

    device_type: str
    compile: bool
    mode: str | None
    freezing: bool
    dtype: torch.dtype
    cudagraphs: bool
    buckets: tuple[int, ...]
    max_batch: int


def power_of_two_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself: e.g. 48 -> (1, 2, 4, 8, 16, 32, 48)."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    buckets = []
    size = 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch)
    return tuple(buckets)


def resolve_forward_options(
    device: torch.device | str,
    *,
    compile: bool = False,
    mode: str | None = None,
    freezing: bool | None = None,
    precision: str = "auto",
    max_batch: int | None = None,
    buckets: Sequence[int] | None = None,
    bf16_supported: bool | None = None,
) -> ForwardOptions:
    """Turn requested options into the settings for ``device``; raises ValueError for settings
    the device cannot run.

    Args:
        device: where the model lives.
        compile: use ``torch.compile``.
        mode: compile mode; None picks the device's default (CPU: inductor's default mode;
            CUDA: 'reduce-overhead'). 'reduce-overhead' (CUDA graphs) is refused off CUDA.
        freezing: inductor freezing; None: on for CPU, off elsewhere.
        precision: 'auto' (CPU: fp32; CUDA: bf16 where supported, else fp16), 'fp32', 'bf16'
            or 'fp16'; half precision is refused off CUDA.
        max_batch: the largest bucket; None: ``DEFAULT_MAX_BATCH`` for the device type (64
            for others).
        buckets: the bucket sizes (the largest must be ``max_batch``); None: powers of two up
            to ``max_batch`` when compiling, no padding in eager mode.
        bf16_supported: whether the CUDA device does bf16 natively (None: from its compute
            capability, :func:`native_bf16`; only read on CUDA).
    """
    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device_type == "cuda":
        if precision == "auto":
            if bf16_supported is None:
                bf16_supported = native_bf16(torch.device(device))
            precision = "bf16" if bf16_supported else "fp16"
    elif precision == "auto":
        precision = "fp32"
    elif precision != "fp32":
        raise ValueError(f"{precision} is for CUDA only; on {device_type} use fp32 (half precision is slower there)")

    if max_batch is None:
        max_batch = max(buckets) if buckets else DEFAULT_MAX_BATCH.get(device_type, 64)
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")

    if buckets is not None:
        resolved_buckets = tuple(sorted({int(size) for size in buckets}))
        if not resolved_buckets or resolved_buckets[0] < 1:
            raise ValueError("buckets must be positive batch sizes")
        if resolved_buckets[-1] != max_batch:
            raise ValueError(f"the largest bucket ({resolved_buckets[-1]}) must equal max_batch ({max_batch})")
    else:
        resolved_buckets = power_of_two_buckets(max_batch) if compile else ()

    if not compile:
        if mode is not None or freezing:
            raise ValueError("a compile mode or freezing needs compile=True")
        return ForwardOptions(device_type, False, None, False, _DTYPES[precision], False, resolved_buckets, max_batch)

    if mode is None:
        mode = CUDA_COMPILE_MODE if device_type == "cuda" else CPU_COMPILE_MODE
    if device_type != "cuda" and mode == "reduce-overhead":
        raise ValueError(f"compile mode 'reduce-overhead' is CUDA graphs; on {device_type} use None or another mode")
    if freezing is None:
        freezing = CPU_FREEZING if device_type == "cpu" else False
    cudagraphs = device_type == "cuda" and mode in ("reduce-overhead", "max-autotune")
    return ForwardOptions(
        device_type, True, mode, bool(freezing), _DTYPES[precision], cudagraphs, resolved_buckets, max_batch
    )


def native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 in hardware (compute capability 8.0 and up: Ampere,
    Hopper, ...); ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated."""
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def _raise_recompile_limit(entries: int) -> None:
    """Let dynamo keep ``entries`` more compiled variants of the model's forward.

    Each bucket is one static-shape variant, and every model instance of one class shares the
    forward's code object and so dynamo's per-code limit (8 by default); past it dynamo would
    silently fall back to eager.
    """
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, getattr(config, name) + entries)
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * getattr(config, name))


class BucketedForward:
    """eps_theta(x, t, y) with batches padded to bucket sizes, optionally compiled.

    ``forward(sample (R, *sample_shape), timesteps (R,) long, class_labels (R,) long | None)``
    returns float32 eps, (R, *sample_shape), on the model's device. Not thread-safe: call it
    from one thread (a worker's engine thread); :meth:`warmup` from that thread too when CUDA
    graphs are on.

    Args:
        model: eps_theta, in eval mode on its device (it is not modified: half precision uses
            autocast, freezing folds a copy of the weights into the compiled code).
        sample_shape: one sample's shape, for :meth:`warmup`'s inputs; default: from a
            U-Net's or MLP's config.
        compile, mode, freezing, precision, max_batch, buckets: see :func:`resolve_forward_options`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sample_shape: Sequence[int] | None = None,
        compile: bool = False,
        mode: str | None = None,
        freezing: bool | None = None,
        precision: str = "auto",
        max_batch: int | None = None,
        buckets: Sequence[int] | None = None,
    ) -> None:
        parameter = next(model.parameters())
        self.model = model
        self.device = parameter.device
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else _default_sample_shape(model)
        self.options = resolve_forward_options(
            self.device,
            compile=compile,
            mode=mode,
            freezing=freezing,
            precision=precision,
            max_batch=max_batch,
            buckets=buckets,
        )
        self._module: nn.Module = model
        if self.options.compile:
            _raise_recompile_limit(len(self.options.buckets) + 2)
            self._module = torch.compile(model, mode=self.options.mode, dynamic=False)
        # bucket -> its compiled forward; a bucket without one runs eagerly (see install, warmup)
        self._compiled: dict[int, Callable[..., torch.Tensor]] = {}
        self.bucket_uses: dict[int, int] = {}
        self.calls = 0
        self.rows = 0
        self.padded_rows = 0
        self.compile_seconds: dict[int, float] = {}

    @property
    def max_batch(self) -> int:
        return self.options.max_batch

    @property
    def buckets(self) -> tuple[int, ...]:
        return self.options.buckets

    @property
    def compiled_buckets(self) -> tuple[int, ...]:
        """The buckets that run compiled code (the others run eagerly), ascending."""
        return tuple(sorted(self._compiled))

    def install(self, bucket: int, forward: Callable[..., torch.Tensor]) -> None:
        """Serve batches of ``bucket`` rows with ``forward(x, t, y)`` (e.g. a package of
        :mod:`ddpm_core.aot`) from the next call on; safe to call from another thread."""
        if bucket not in self.options.buckets:
            raise ValueError(f"{bucket} is not one of the buckets {self.options.buckets}")
        self._compiled[bucket] = forward  # one dict store: the caller's thread sees old or new

    def bucket_for(self, rows: int) -> int:
        """The padded size of a batch of ``rows`` (<= max_batch) rows: the smallest bucket that
        holds it, or ``rows`` itself when there are no buckets."""
        for bucket in self.options.buckets:
            if bucket >= rows:
                return bucket
        return rows

    def __call__(
        self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows = sample.shape[0]
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1).expand(rows)
        if rows <= self.max_batch:
            return self._run(sample, timesteps, class_labels)
        outputs = []
        for start in range(0, rows, self.max_batch):
            end = min(start + self.max_batch, rows)
            labels = None if class_labels is None else class_labels[start:end]
            outputs.append(self._run(sample[start:end], timesteps[start:end], labels))
        return torch.cat(outputs)

    def _run(self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        rows = sample.shape[0]
        bucket = self.bucket_for(rows)
        self.bucket_uses[bucket] = self.bucket_uses.get(bucket, 0) + 1
        compiled = self._compiled.get(bucket)
        if compiled is None:  # not compiled (yet): eager, unpadded
            self.calls += 1
            self.rows += rows
            with torch.inference_mode(), self._context(compiling=False):
                output = self.model(sample, timesteps, class_labels)
            return output if output.dtype == torch.float32 else output.float()
        self.calls += 1
        self.rows += rows
        self.padded_rows += bucket - rows
        with torch.inference_mode(), self._context(compiling=True):
            # Fresh contiguous inference tensors whatever the caller gave (a normal tensor, an
            # expanded timestep with stride 0): dynamo guards on both, and any change would
            # recompile a bucket; a package wants its exact shapes.
            sample, timesteps, class_labels = self._padded(sample, timesteps, class_labels, bucket)
            if self.options.cudagraphs and compiled is self._module:
                torch.compiler.cudagraph_mark_step_begin()
            output = compiled(sample, timesteps, class_labels)
        output = output[:rows]
        if output.dtype != torch.float32:
            return output.float()  # a copy, out of any CUDA graph's memory
        return output.clone() if self.options.cudagraphs else output

    def _padded(
        self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None, bucket: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The inputs copied into (bucket, ...) tensors; padding rows: x = 0, t = 0, the null label."""
        rows = sample.shape[0]
        padded_sample = sample.new_zeros((bucket, *sample.shape[1:]), dtype=torch.float32)
        padded_sample[:rows] = sample
        padded_timesteps = torch.zeros(bucket, dtype=torch.long, device=sample.device)
        padded_timesteps[:rows] = timesteps
        padded_labels = None
        if class_labels is not None:
            padded_labels = torch.full((bucket,), self.num_classes, dtype=torch.long, device=sample.device)
            padded_labels[:rows] = class_labels
        return padded_sample, padded_timesteps, padded_labels

    def _context(self, compiling: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        if self.options.dtype != torch.float32:
            stack.enter_context(torch.autocast(device_type=self.options.device_type, dtype=self.options.dtype))
        if compiling and self.options.compile and self.options.freezing:
            stack.enter_context(torch._inductor.config.patch(freezing=True))
        return stack

    def warmup(self, buckets: Sequence[int] | None = None) -> dict[int, float]:
        """Compile (when compiling in process) and run each bucket (default: all; the max batch
        when there are none) with dummy inputs; {bucket: seconds}, also kept in
        ``compile_seconds``. A compiled bucket serves calls only once it is warm; with CUDA graphs
        it runs three times (warm-up, graph recording, a first replay), so no live call records
        a graph. Call it from the thread that calls the forward."""
        sizes = tuple(buckets) if buckets is not None else (self.options.buckets or (self.max_batch,))
        runs = 3 if self.options.cudagraphs else 1
        seconds = {}
        for size in sizes:
            sample, timesteps, labels = dummy_inputs(size, self.sample_shape, self.num_classes, self.device)
            uses = self.bucket_uses.get(size, 0)
            if self.options.compile and size in self.options.buckets:
                self._compiled[size] = self._module
            started = time.perf_counter()
            try:
                for _ in range(runs):
                    self._run(sample, timesteps, labels)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            except BaseException:
                if self._compiled.get(size) is self._module:
                    del self._compiled[size]
                raise
            finally:
                self.calls -= runs
                self.rows -= runs * size
                self.bucket_uses[size] = uses
            seconds[size] = time.perf_counter() - started
            logger.info("forward bucket %d ready in %.2f s", size, seconds[size])
        self.compile_seconds.update(seconds)
        return seconds


def dummy_inputs(
    size: int, sample_shape: Sequence[int], num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Inputs of one bucket: x (size, *sample_shape) zeros, t (size,) zeros and, for a
    conditional model, y (size,) filled with the null label ``num_classes``."""
    sample = torch.zeros((size, *sample_shape), device=device)
    timesteps = torch.zeros(size, dtype=torch.long, device=device)
    labels = torch.full((size,), num_classes, device=device) if num_classes else None
    return sample, timesteps, labels


def _default_sample_shape(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "image_size") and hasattr(config, "in_channels"):
        return (config.in_channels, config.image_size, config.image_size)
    if config is not None and hasattr(config, "data_dim"):
        return (int(config.data_dim),)
    raise ValueError("give sample_shape: it cannot be read from this model's config")
