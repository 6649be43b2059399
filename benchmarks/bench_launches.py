"""Work launched per engine tick at 1, 4 and 16 concurrent jobs: it must not grow with the jobs.

    python benchmarks/bench_launches.py [--checkpoint checkpoints/mnist.safetensors] [--device cpu|cuda]

One tick is what the engine does per step of its batch: the executor's shared forward and
vectorised sampler step (:meth:`worker.engine.executor.StepExecutor.step`) and the output side's
gather and copy (:class:`worker.engine.outputs.OutputProcessor`), with a preview due for every job.
Each job is one digit, the samplers, step counts and guidance scales mixed (DDPM 1000, DDIM 50
and 20; guidance 0 and 1). Counted for one tick, after one tick of warm-up:

* ``device ops``: aten operations dispatched outside the host-side planning of the tick's rows
  (:func:`ddpm_core.batching.host_rows`, which loops over jobs on the CPU: noise from each
  sample's generator, the per-row tables); on CUDA also the kernels the profiler saw launched;
* ``host plan ops``: the aten operations of that planning (host tensors only);
* ``uploads`` and ``downloads``: copies between host and device, from the profiler on CUDA; on
  a CPU the output side's copies into its host buffer;
* ``tick ms``: the median of 5 ticks.

The table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ddpm_core.batching as batching  # noqa: E402
from ddpm_core.checkpoint import load_checkpoint  # noqa: E402
from worker.engine.executor import StepExecutor  # noqa: E402
from worker.engine.outputs import OutputProcessor  # noqa: E402
from worker.engine.request_state import EngineRequest, OutputPlan  # noqa: E402

JOB_COUNTS = (1, 4, 16)


class OpCounter(TorchDispatchMode):
    """Counts aten operations, apart for those inside the host planning."""

    def __init__(self) -> None:
        super().__init__()
        self.device_ops = 0
        self.host_ops = 0
        self.in_host_plan = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.in_host_plan:
            self.host_ops += 1
        else:
            self.device_ops += 1
        return func(*args, **(kwargs or {}))


def requests(jobs: int, guidance: float) -> list[EngineRequest]:
    return [
        EngineRequest(
            n=1,
            sampler=("ddpm", "ddim", "ddim")[i % 3],
            steps=(None, 50, 20)[i % 3],
            guidance=(0.0, guidance)[(i // 3) % 2],
            seed=i,
            digit=i % 10,
        )
        for i in range(jobs)
    ]


def one_tick(executor: StepExecutor, outputs: OutputProcessor, generations, forward) -> None:
    plan = OutputPlan(preview_steps=frozenset(range(1, 1001)))
    tick = executor.step(generations, forward)
    outputs.process([(plan, info, False) for info in tick.results])


def measure(loaded, device: torch.device, jobs: int) -> dict[str, float]:
    model = loaded.model.to(device).eval()
    executor = StepExecutor(
        loaded.schedule, tuple(loaded.sample_shape), device, int(getattr(model, "num_classes", 0)), max_batch=256
    )
    generations = [executor.prepare(request) for request in requests(jobs, guidance=1.0)]
    outputs = OutputProcessor(tuple(loaded.sample_shape), device)
    counter = OpCounter()
    original = batching.host_rows

    def host_rows_counted(*args, **kwargs):
        counter.in_host_plan = True
        try:
            return original(*args, **kwargs)
        finally:
            counter.in_host_plan = False

    batching.host_rows = host_rows_counted
    try:
        with torch.inference_mode():
            one_tick(executor, outputs, generations, model)  # warm-up
            copies_before = outputs.copies
            with counter:
                one_tick(executor, outputs, generations, model)
            downloads = outputs.copies - copies_before
            kernels = uploads = None
            if device.type == "cuda":
                kernels, uploads, downloads = cuda_launches(executor, outputs, generations, model)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                one_tick(executor, outputs, generations, model)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
    finally:
        batching.host_rows = original
    return {
        "device_ops": counter.device_ops,
        "host_ops": counter.host_ops,
        "kernels": kernels,
        "uploads": uploads,
        "downloads": downloads,
        "ms": 1000 * statistics.median(times),
    }


def cuda_launches(executor, outputs, generations, model) -> tuple[int, int, int]:
    """(kernels, host-to-device copies, device-to-host copies) of one tick, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        one_tick(executor, outputs, generations, model)
        torch.cuda.synchronize()
    kernels = uploads = downloads = 0
    for event in prof.events():
        name = event.name
        if name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch"):
            kernels += 1
        elif name.startswith("Memcpy HtoD"):
            uploads += 1
        elif name.startswith("Memcpy DtoH"):
            downloads += 1
    return kernels, uploads, downloads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "mnist.safetensors"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loaded = load_checkpoint(args.checkpoint)
    rows = {jobs: measure(loaded, device, jobs) for jobs in JOB_COUNTS}
    print(f"\nOne engine tick on {device.type} ({torch.__version__}), {Path(args.checkpoint).name}, eager forward\n")
    print("| jobs | device ops | kernels (CUDA) | host plan ops | uploads | downloads | tick ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for jobs, row in rows.items():
        kernels = "-" if row["kernels"] is None else row["kernels"]
        uploads = "1 (by construction)" if row["uploads"] is None else row["uploads"]
        print(
            f"| {jobs} | {row['device_ops']} | {kernels} | {row['host_ops']} | {uploads} | "
            f"{row['downloads']} | {row['ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
