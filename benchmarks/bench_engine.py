"""Micro-benchmark of the batching engine: U-Net forwards vs batch size, eager vs compiled, and
the engine's throughput for concurrent jobs vs one job at a time.

    python benchmarks/bench_engine.py [--checkpoint checkpoints/mnist.safetensors] [--threads 2]
        [--sizes 1,8,16,32,64,128] [--jobs 16] [--steps 10] [--caps 8,16,32,64] [--no-compile]
        [--cold] [--compile-variants 32] [--budget 1.5] [--rounds 3]

Three tables, measured side by side in one run:

1. Image-forwards per second for each batch size, eager and compiled (the compiled forward is
   a :class:`~ddpm_core.compiled.BucketedForward` with one bucket per batch size, so no row is
   padding), with each compiled size's first-call seconds (inductor's compile; much shorter
   when its on-disk cache already holds the graph, so the table says whether it was cold).
2. The engine: ``--jobs`` concurrent n=1 DDIM jobs (``--steps`` steps, the model's default
   guidance, digits 0..9 in turn) submitted at once, against the same jobs run one at a time
   with ``generate()`` (what a worker without batching does), eager and compiled.
3. The cap: the same load at twice the jobs, with each ``--caps`` value (forward rows per
   tick), eager and compiled: throughput beside the mean wait and completion time per job.

``--compile-variants B`` adds, at batch B, the CPU compile settings compared when choosing
the defaults of :mod:`ddpm_core.compiled` (each costs a compile).

Measured on this project's 2-core CPU (2 torch threads, the shipped 0.72M-parameter MNIST
U-Net, other work running beside it: numbers are the best of 3 interleaved rounds, and still
move by 10-20% between runs); ``--cold --compile-variants 32``:

    batch | eager ms | eager img/s | compiled ms | compiled img/s | speed-up | compile s (cold)
        1 |      8.5 |         117 |         6.1 |            165 |    1.40x | 27.8
        8 |     16.9 |         474 |         9.9 |            805 |    1.70x | 22.6
       16 |     20.4 |         785 |        14.2 |           1130 |    1.44x | 21.1
       32 |     30.8 |        1037 |        24.9 |           1285 |    1.24x | 22.7
       64 |     52.9 |        1209 |        46.4 |           1380 |    1.14x | 22.2
      128 |    201.3 |         636 |       123.5 |           1036 |    1.63x | 23.2

    16 n=1 DDIM-10 jobs, guidance 0.5 (32 rows) | seconds | jobs/s | speed-up
    one at a time, generate()                   |    1.26 |   12.7 | 1.00x
    engine, eager, cap 64                       |    0.51 |   31.1 | 2.46x
    engine, compiled, cap 64                    |    0.35 |   46.3 | 3.66x

    32 jobs (64 rows) | cap 8 | cap 16 | cap 32 | cap 64   (jobs/s; mean completion s)
    eager             | 14.8; 1.25 | 24.3; 0.82 | 35.7; 0.67 | 44.6; 0.72
    compiled          | 24.0; 0.75 | 36.5; 0.55 | 48.3; 0.50 | 55.2; 0.58

Compile settings at batch 32 (ms/forward beside eager in turns): default mode with freezing
24.4 (1.21x), without 24.0 (1.13x), 'max-autotune-no-cudagraphs' without freezing 24.6
(1.14x), with freezing about 210 (9x slower, twice). At batches 8 and 64, four fresh compiles
each: freezing 3-5% faster (7.1-7.5 vs 7.7-8.5 ms; 44.9-46.2 vs 46.9-47.9 ms), but its
warm-cache compile takes 10-14 s per bucket against 1-2 s without.

Chosen: CPU cap 64 rows (``DEFAULT_MAX_BATCH['cpu']``; throughput peaks at 64 and falls at
128, and a 64-row tick takes about 50 ms); buckets 1, 2, 4, ..., 64; default mode with
freezing. CUDA suggestion (not measured here): 256 rows, buckets 1..256, CUDA graphs, bf16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.compiled import BucketedForward
from ddpm_core.pipeline import generate
from ddpm_core.samplers import make_sampler
from worker.engine import Engine, EngineRequest

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "mnist.safetensors"


def inputs(checkpoint, rows: int):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, *checkpoint.sample_shape, generator=generator)
    t = torch.randint(0, checkpoint.schedule.num_train_timesteps, (rows,), generator=generator)
    labels = torch.randint(0, checkpoint.num_classes + 1, (rows,), generator=generator)
    return x, t, labels


def time_forwards(forwards: dict, args, budget_s: float, rounds: int = 3) -> dict[str, float]:
    """Seconds per call of each forward: in each of ``rounds`` rounds every forward is timed in
    turn (median of its repeats over ``budget_s / rounds``); the best round counts. Taking
    turns and the best round keep the comparison fair on a machine with other load."""
    for forward in forwards.values():
        forward(*args)
    best = {name: float("inf") for name in forwards}
    for _ in range(rounds):
        for name, forward in forwards.items():
            times = []
            started = time.perf_counter()
            while len(times) < 3 or time.perf_counter() - started < budget_s / rounds:
                begin = time.perf_counter()
                forward(*args)
                times.append(time.perf_counter() - begin)
            best[name] = min(best[name], statistics.median(times))
    return best


def requests_for(checkpoint, jobs: int, steps: int, guidance: float) -> list[EngineRequest]:
    digits = checkpoint.num_classes or 1
    return [
        EngineRequest(
            n=1,
            sampler="ddim",
            steps=steps,
            guidance=guidance,
            seed=index,
            digit=index % digits if checkpoint.num_classes else None,
        )
        for index in range(jobs)
    ]


def run_alone(checkpoint, requests: list[EngineRequest]) -> float:
    """Seconds for the jobs one after another with generate()."""
    started = time.perf_counter()
    for request in requests:
        generate(
            checkpoint.model,
            make_sampler(request.sampler, checkpoint.schedule, request.steps),
            sample_shape=checkpoint.sample_shape,
            num_samples=request.n,
            class_labels=request.class_labels(),
            guidance_scale=request.guidance,
            seed=request.seed,
        )
    return time.perf_counter() - started


def run_engine(checkpoint, requests: list[EngineRequest], forward, cap: int) -> dict:
    """Submit every job at once; seconds to the last, mean wait and completion, stats."""
    engine = Engine(
        checkpoint.model,
        checkpoint.schedule,
        sample_shape=checkpoint.sample_shape,
        forward=forward,
        max_batch=cap,
        start=False,
    )
    with engine:
        started = time.monotonic()
        jobs = [engine.submit(request) for request in requests]
        engine.start()
        for job in jobs:
            job.result()
        seconds = time.monotonic() - started
        stats = engine.stats()
    return {
        "seconds": seconds,
        "wait": statistics.mean(job.started_at - started for job in jobs),
        "latency": statistics.mean(job.finished_at - started for job in jobs),
        "rows_per_tick": stats.mean_rows_per_tick,
        "ticks": stats.ticks,
    }


def compile_variants(checkpoint, eager, batch: int, budget_s: float) -> None:
    print(f"\n## CPU compile settings at batch {batch} (each a fresh compile, timed in turns with eager)\n")
    print("| mode | freezing | first call s | ms/forward | eager ms | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    args = inputs(checkpoint, batch)
    for mode, freezing in [(None, True), (None, False), ("max-autotune-no-cudagraphs", False)]:
        torch._dynamo.reset()  # freezing is read at compile time: no cache entry may be shared
        forward = BucketedForward(checkpoint.model, compile=True, mode=mode, freezing=freezing, buckets=(batch,))
        first = forward.warmup()[batch]
        seconds = time_forwards({"compiled": forward, "eager": eager}, args, budget_s)
        print(
            f"| {mode or 'default'} | {freezing} | {first:.1f} | {1000 * seconds['compiled']:.1f} | "
            f"{1000 * seconds['eager']:.1f} | {seconds['eager'] / seconds['compiled']:.2f}x |"
        )
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="1,8,16,32,64,128")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per job")
    parser.add_argument("--guidance", type=float, help="default: the checkpoint's")
    parser.add_argument("--caps", default="8,16,32,64")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timing per forward and size")
    parser.add_argument("--rounds", type=int, default=3, help="engine runs per setting (the best counts)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cold", action="store_true", help="compile with an empty inductor cache")
    parser.add_argument("--compile-variants", type=int, metavar="BATCH")
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint, device="cpu")
    guidance = args.guidance if args.guidance is not None else float(checkpoint.training.get("default_guidance", 0.0))
    sizes = [int(size) for size in args.sizes.split(",")]
    caps = [int(cap) for cap in args.caps.split(",")]
    print(
        f"# bench_engine: {args.checkpoint.name}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"inductor cache {'cold' if args.cold else 'as found'}\n"
    )

    eager = BucketedForward(checkpoint.model, max_batch=max(sizes))
    compiled = None
    compile_seconds: dict[int, float] = {}
    if not args.no_compile:
        compiled = BucketedForward(checkpoint.model, compile=True, buckets=sizes)
        compile_seconds = compiled.warmup()
    print("## U-Net forwards\n")
    print("| batch | eager ms | eager img/s | compiled ms | compiled img/s | speed-up | first call (compile) s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        forwards = {"eager": eager} if compiled is None else {"eager": eager, "compiled": compiled}
        seconds = time_forwards(forwards, inputs(checkpoint, size), args.budget)
        row = f"| {size} | {1000 * seconds['eager']:.1f} | {size / seconds['eager']:.0f} |"
        if compiled is not None:
            row += f" {1000 * seconds['compiled']:.1f} | {size / seconds['compiled']:.0f} |"
            row += f" {seconds['eager'] / seconds['compiled']:.2f}x | {compile_seconds[size]:.1f} |"
        else:
            row += " - | - | - | - |"
        print(row)
        sys.stdout.flush()

    print(f"\n## {args.jobs} concurrent n=1 DDIM-{args.steps} jobs, guidance {guidance}\n")
    print("| how | forward | cap | seconds | jobs/s | speed-up | rows/tick |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    requests = requests_for(checkpoint, args.jobs, args.steps, guidance)
    run_alone(checkpoint, requests[:2])  # warm the eager path
    forwards = [("eager", eager)] + ([("compiled", compiled)] if compiled is not None else [])
    cap = max(caps)
    best: dict[str, dict] = {}
    for _ in range(args.rounds):  # in turns, the best round counts (as for the forwards)
        seconds = run_alone(checkpoint, requests)
        if seconds < best.get("alone", {"seconds": float("inf")})["seconds"]:
            best["alone"] = {"seconds": seconds}
        for name, forward in forwards:
            result = run_engine(checkpoint, requests, forward, cap)
            if result["seconds"] < best.get(name, {"seconds": float("inf")})["seconds"]:
                best[name] = result
    alone_s = best["alone"]["seconds"]
    print(f"| one at a time (generate) | eager | - | {alone_s:.2f} | {args.jobs / alone_s:.1f} | 1.00x | - |")
    for name, _ in forwards:
        result = best[name]
        print(
            f"| engine | {name} | {cap} | {result['seconds']:.2f} | {args.jobs / result['seconds']:.1f} | "
            f"{alone_s / result['seconds']:.2f}x | {result['rows_per_tick']:.1f} |"
        )
    sys.stdout.flush()

    load = requests_for(checkpoint, 2 * args.jobs, args.steps, guidance)
    print(f"\n## the cap: {len(load)} jobs at once (n=1, DDIM-{args.steps}, guidance {guidance})\n")
    print("| forward | cap | seconds | jobs/s | mean wait s | mean completion s | rows/tick |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    results: dict[tuple[str, int], dict] = {}
    for _ in range(args.rounds):
        for name, forward in forwards:
            for cap in caps:
                result = run_engine(checkpoint, load, forward, cap)
                if result["seconds"] < results.get((name, cap), {"seconds": float("inf")})["seconds"]:
                    results[name, cap] = result
    for (name, cap), result in results.items():
        print(
            f"| {name} | {cap} | {result['seconds']:.2f} | {len(load) / result['seconds']:.1f} | "
            f"{result['wait']:.2f} | {result['latency']:.2f} | {result['rows_per_tick']:.1f} |"
        )
    sys.stdout.flush()

    if args.compile_variants:
        compile_variants(checkpoint, eager, args.compile_variants, args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
