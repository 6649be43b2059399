"""A smoke benchmark of the serving engine on one GPU (or, with ``--small``, on a CPU in seconds),
printing one table: what the device is, how long each bucket takes to warm, how far the
compiled forward is from eager fp32, whether a job alone equals the same job in a 16-job batch,
where a tick's time goes (with every job's frames and previews copied to the host at every
step, and without), rows/s per bucket, two engines on one device thread, memory, 16 digits
with DDPM 1000 and guidance, and digits/s at 1000 steps under 64 concurrent jobs.

    python benchmarks/gpu_smoke.py [--checkpoint checkpoints/mnist.safetensors] [--device cuda]
        [--max-bucket 1024] [--small]

On one H100 it is meant to finish in under 8 minutes. ``--small`` (the tests run it) uses a
tiny untrained U-Net, buckets up to 4 and few steps, on whatever device is given.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ddpm_core import NoiseSchedule, UNet, UNetConfig  # noqa: E402
from ddpm_core.checkpoint import load_checkpoint  # noqa: E402
from ddpm_core.compiled import BucketedForward, dummy_inputs, native_bf16, power_of_two_buckets  # noqa: E402
from ddpm_core.device import pick_device  # noqa: E402
from ddpm_core.pipeline import generate  # noqa: E402
from ddpm_core.samplers import make_sampler  # noqa: E402
from worker.engine import Engine, EngineRequest  # noqa: E402
from worker.engine.device_thread import DeviceThread  # noqa: E402
from worker.engine.request_state import OutputPlan  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiny_model(device: torch.device) -> tuple[torch.nn.Module, NoiseSchedule, tuple[int, ...]]:
    torch.manual_seed(0)
    config = UNetConfig(
        image_size=8,
        in_channels=1,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        num_classes=10,
        norm_groups=4,
    )
    return UNet(config).eval().to(device), NoiseSchedule.linear(100, scale_to_length=True), (1, 8, 8)


def tolerance_per_precision(model, schedule, shape, device, steps: int, max_bucket: int) -> list[tuple[str, str]]:
    """Per precision the device runs natively (fp32 on a CPU; fp32, fp16 and bf16 where native on
    CUDA): a job alone and the same job in a 16-job batch against ``generate()`` in fp32, as the
    mean and largest absolute pixel difference (of 255). This is the stated tolerance of each."""
    precisions = ["fp32"]
    if device.type == "cuda":
        precisions += ["fp16"] + (["bf16"] if native_bf16(device) else [])
    request = EngineRequest(n=4, sampler="ddim", steps=steps, digit=3, guidance=0.5, seed=21)
    with torch.inference_mode():
        reference = generate(
            model,
            make_sampler("ddim", schedule, steps),
            sample_shape=shape,
            class_labels=[3] * 4,
            guidance_scale=0.5,
            seed=21,
        )
    rows = []
    for precision in precisions:
        forward = BucketedForward(model, sample_shape=shape, max_batch=max_bucket, precision=precision)
        with Engine(model, schedule, sample_shape=shape, forward=forward, max_batch=max_bucket) as engine:
            alone = engine.submit(request).result(600)
            crowd = [
                engine.submit(EngineRequest(n=1, sampler="ddim", steps=steps, digit=i % 10, seed=300 + i))
                for i in range(15)
            ]
            batched = engine.submit(request).result(600)
            for job in crowd:
                job.result(600)
        for label, result in (("alone", alone), ("in a batch", batched)):
            pixels = (result - reference).abs() * 127.5
            rows.append(
                (
                    f"{precision}: job {label} vs generate() fp32, mean / max difference (of 255)",
                    f"{pixels.mean().item():.3f} / {pixels.max().item():.2f}",
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "mnist.safetensors")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-bucket", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="tiny model, buckets up to 4, few steps (CPU tests)")
    parser.add_argument("--eager", action="store_true", help="no compiling (the fast lane of the tests)")
    args = parser.parse_args()
    device = pick_device(args.device)
    rows: list[tuple[str, str]] = []
    if args.small:
        model, schedule, shape = tiny_model(device)
        max_bucket, steps, jobs_under_load = 4, 20, 8
    else:
        loaded = load_checkpoint(args.checkpoint, device=device)
        model, schedule, shape = loaded.model, loaded.schedule, loaded.sample_shape
        max_bucket, steps, jobs_under_load = args.max_bucket, schedule.num_train_timesteps, 64
    compiler = "none"
    if device.type == "cuda":
        compiler = (
            f"inductor, {torch.cuda.get_device_name(device)}, capability {torch.cuda.get_device_capability(device)}"
        )
    rows += [
        ("device", str(device)),
        ("torch / CUDA", f"{torch.__version__} / {torch.version.cuda}"),
        ("compiler", compiler),
    ]

    buckets = power_of_two_buckets(max_bucket)
    compile = not args.eager
    compiled = BucketedForward(model, sample_shape=shape, compile=compile, max_batch=max_bucket, buckets=buckets)
    eager = BucketedForward(model, sample_shape=shape, max_batch=max_bucket, precision="fp32")
    warm = compiled.warmup()
    rows.append(("warm-up s per bucket", ", ".join(f"{b}: {s:.1f}" for b, s in warm.items())))
    errors, rates = [], []
    for bucket in buckets:
        sample, timesteps, labels = dummy_inputs(bucket, shape, model.num_classes, device)
        sample.normal_(generator=torch.Generator(device).manual_seed(bucket))
        timesteps.fill_(schedule.num_train_timesteps // 2)
        with torch.inference_mode():
            reference = eager(sample, timesteps, labels)
            output = compiled(sample, timesteps, labels)
            errors.append(f"{bucket}: {(output - reference).abs().max().item():.1e}")
            sync(device)
            started, calls = time.perf_counter(), 0
            while time.perf_counter() - started < 0.5:
                compiled(sample, timesteps, labels)
                calls += 1
            sync(device)
            rates.append(f"{bucket}: {bucket * calls / (time.perf_counter() - started):.0f}")
    rows.append(("eps max error, compiled vs eager fp32, per bucket", ", ".join(errors)))
    rows.append(("rows/s per bucket (compiled)", ", ".join(rates)))

    request = EngineRequest(n=1, sampler="ddim", steps=steps, digit=3, guidance=0.5, seed=11)
    every_step = frozenset(range(1, steps + 1))
    with Engine(model, schedule, sample_shape=shape, forward=compiled, max_batch=max_bucket) as engine:
        alone = engine.submit(request).result(600)
        others = [
            engine.submit(EngineRequest(n=1, sampler="ddim", steps=steps, digit=i % 10, guidance=0.5, seed=100 + i))
            for i in range(15)
        ]
        batched = engine.submit(request).result(600)
        for job in others:
            job.result(600)
        difference = ((alone - batched).abs().mean() * 127.5).item()
        rows.append(("job alone vs in a 16-job batch: mean abs difference (of 255)", f"{difference:.3f}"))

        for label, plan in (("off", None), ("on, every step", OutputPlan(every_step, every_step))):
            before = engine.stats()
            started = time.perf_counter()
            jobs = [
                engine.submit(EngineRequest(n=1, sampler="ddim", steps=steps, digit=1, seed=i), outputs=plan)
                for i in range(16)
            ]
            for job in jobs:
                job.result(600)
            total_s = time.perf_counter() - started
            after = engine.stats()
            rows.append(
                (
                    f"16 jobs, frames and previews {label}: wall s / engine busy s / ticks / host copies",
                    f"{total_s:.2f} / {after.busy_seconds - before.busy_seconds:.2f} / "
                    f"{after.ticks - before.ticks} / {after.host_copies - before.host_copies}",
                )
            )

        started = time.perf_counter()
        sixteen = engine.submit(EngineRequest(n=16, sampler="ddpm", digit=7, guidance=0.5, seed=1))
        sixteen.result(1200)
        rows.append(
            (
                f"16 digits, DDPM {schedule.num_train_timesteps} steps, guidance 0.5",
                f"{time.perf_counter() - started:.2f} s",
            )
        )

        started = time.perf_counter()
        load = [
            engine.submit(EngineRequest(n=1, sampler="ddpm", digit=i % 10, guidance=0.5, seed=i))
            for i in range(jobs_under_load)
        ]
        for job in load:
            job.result(3600)
        seconds = time.perf_counter() - started
        rows.append(
            (
                f"digits/s at {schedule.num_train_timesteps} steps, {jobs_under_load} concurrent jobs",
                f"{jobs_under_load / seconds:.1f}",
            )
        )
    if device.type == "cuda":
        rows.append(("memory reserved after warm-up (MB)", f"{torch.cuda.memory_reserved(device) / 2**20:.0f}"))

    # two engines of the same model, as a worker runs them: on its device's one thread, 200 ticks each,
    # driven by two client threads at once
    second = BucketedForward(model, sample_shape=shape, compile=compile, max_batch=max_bucket, buckets=buckets)
    device_thread = DeviceThread(f"smoke-{device}")
    engines = [
        Engine(
            model,
            schedule,
            sample_shape=shape,
            forward=forward,
            max_batch=max_bucket,
            name=f"smoke-{i}",
            device_thread=device_thread,
        )
        for i, forward in enumerate((compiled, second))
    ]
    engines[1].warmup(timeout=3600)
    failures: list[str] = []
    outputs: list[torch.Tensor] = []

    def drive(engine: Engine) -> None:
        try:
            job = engine.submit(
                EngineRequest(n=4, sampler="ddim", steps=200 if not args.small else 20, digit=5, seed=3)
            )
            outputs.append(job.result(3600))
        except Exception as error:  # recorded in the table
            failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=drive, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    agree = len(outputs) == 2 and torch.allclose(outputs[0], outputs[1], atol=1e-3)
    rows.append(
        (
            "two engines on one device thread, two clients: errors; outputs equal",
            f"{len(failures)} {failures[:1]}; {agree}",
        )
    )
    for engine in engines:
        engine.close(timeout=60)
    if device.type == "cuda":
        del engines, second
        torch.cuda.empty_cache()
        rows.append(
            ("memory reserved after closing the engines (MB)", f"{torch.cuda.memory_reserved(device) / 2**20:.0f}")
        )

    with torch.inference_mode():
        reference = generate(
            model,
            make_sampler("ddim", schedule, steps),
            sample_shape=shape,
            class_labels=[3],
            guidance_scale=0.5,
            seed=11,
        )
    rows.append(
        (
            "engine vs generate(), one job: mean abs difference (of 255)",
            f"{((alone - reference).abs().mean() * 127.5).item():.3f}",
        )
    )
    rows += tolerance_per_precision(model, schedule, shape, device, steps, max_bucket)
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
