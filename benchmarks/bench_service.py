"""Time the service end to end: POST /generate -> PNG, beside bare ``generate()`` for the same work.

    python benchmarks/bench_service.py [--checkpoint checkpoints/mnist.safetensors] [--n 16] [--ddim-steps 50]

Starts its own stack (an embedded redis-server, one Celery worker, the API on a free port),
warms the worker up with one small job (the model loads once per worker process), then for
DDIM with ``--ddim-steps`` and DDPM over all training steps: the wall time from POST to the
PNG bytes (following the event stream), the worker's own time for the job (generation plus
PNG/GIF rendering) and the bare ``generate()`` in this process with the same model, sampler,
batch, digit, guidance and seed. Without the checkpoint it uses a tiny untrained test model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve.command import api_command, stop_process, worker_command  # noqa: E402
from serve.redis_server import EmbeddedRedis, free_port  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "mnist.safetensors"
logger = logging.getLogger("bench_service")


def tiny_checkpoint(path: Path) -> Path:
    """The tests' tiny untrained 10-class U-Net (200 training steps)."""
    import torch

    from ddpm_core.checkpoint import save_checkpoint
    from ddpm_core.models import UNet, UNetConfig
    from ddpm_core.schedule import NoiseSchedule

    torch.manual_seed(0)
    config = UNetConfig(
        base_channels=8,
        channel_mult=(1, 2),
        attention_resolutions=(),
        num_res_blocks=1,
        num_classes=10,
        dropout=0.0,
        norm_groups=4,
    )
    return save_checkpoint(
        path,
        UNet(config),
        NoiseSchedule.linear(200),
        class_names=[str(d) for d in range(10)],
        sample_shape=(1, 28, 28),
        dataset="mnist",
        training={"default_guidance": 0.0},
    )


def run_job(client: httpx.Client, body: dict) -> tuple[float, dict, bytes]:
    """POST, follow the event stream to its end, GET the PNG: (seconds, job record, png)."""
    started = time.perf_counter()
    response = client.post("/generate", json=body)
    response.raise_for_status()
    links = response.json()["links"]
    terminal = None
    with client.stream("GET", links["events"], timeout=None) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                if event in ("succeeded", "failed", "cancelled"):
                    terminal = event
            elif not line and terminal:
                break
    png = client.get(links["png"])
    seconds = time.perf_counter() - started
    record = client.get(links["self"]).json()
    if terminal != "succeeded" or png.status_code != 200:
        raise RuntimeError(f"job ended {terminal}: {record.get('error')}")
    return seconds, record, png.content


def bare_generate(loaded, params: dict) -> float:
    """Seconds for ``generate()`` alone with the job's parameters."""
    import torch

    from ddpm_core.pipeline import generate
    from ddpm_core.samplers import make_sampler

    sampler = make_sampler(params["sampler"], loaded.schedule, params["steps"])  # the exact steps the spec ran
    labels = [params["digit"]] * params["n"] if params["digit"] is not None else None
    started = time.perf_counter()
    generate(
        loaded.model,
        sampler,
        sample_shape=loaded.sample_shape,
        num_samples=params["n"],
        class_labels=labels,
        guidance_scale=params["guidance"],
        seed=params["seed"],
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--skip-ddpm", action="store_true", help="time DDIM only")
    parser.add_argument("--threads", type=int, help="torch threads in the worker and here (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    workdir = Path(tempfile.mkdtemp(prefix="ddpm-bench-"))
    models = workdir / "models"
    models.mkdir()
    if args.checkpoint.is_file():
        checkpoint, label = models / "mnist.safetensors", f"{args.checkpoint}"
        os.symlink(args.checkpoint.resolve(), checkpoint)
    else:
        checkpoint, label = tiny_checkpoint(models / "mnist.safetensors"), "tiny untrained test model (T=200)"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDPM_")}
    env.update(DDPM_MODEL_DIR=str(models), DDPM_KEY_PREFIX="bench", DDPM_QUEUE_NAME="bench")
    import torch

    from ddpm_core.checkpoint import load_checkpoint

    if args.threads:
        env["DDPM_TORCH_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    loaded = load_checkpoint(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
    redis_server = EmbeddedRedis().start()
    env["REDIS_URL"] = redis_server.url
    port = free_port()
    log = (workdir / "stack.log").open("wb")
    processes = [
        (
            "worker",
            subprocess.Popen(
                worker_command(queue="bench"), env=env, cwd=REPO, stdout=log, stderr=log, start_new_session=True
            ),
        ),
        (
            "API",
            subprocess.Popen(
                api_command("127.0.0.1", port), env=env, cwd=REPO, stdout=log, stderr=log, start_new_session=True
            ),
        ),
    ]
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the stack did not become ready; see {workdir / 'stack.log'}")
                time.sleep(0.3)
            cold, _, _ = run_job(client, {"n": 1, "sampler": "ddim", "steps": 10, "digit": args.digit})
            logger.info("warm-up job (includes the model load): %.2f s", cold)
            cases = [("DDIM", {"sampler": "ddim", "steps": args.ddim_steps})]
            if not args.skip_ddpm:
                cases.append(("DDPM", {"sampler": "ddpm"}))
            for name, extra in cases:  # service then bare, back to back, under similar load
                body = {"n": args.n, "digit": args.digit, "seed": 0, **extra}
                seconds, record, _ = run_job(client, body)
                worker_s = _worker_seconds(client, record["id"])
                logger.info("%s via the service: %.2f s", name, seconds)
                bare = bare_generate(loaded, record["params"])
                logger.info("%s bare generate(): %.2f s", name, bare)
                rows.append((name, record["params"], seconds, worker_s, bare))
    finally:
        for name, process in reversed(processes):
            stop_process(process, name)
        redis_server.stop()
        log.close()
    results = rows
    shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nmodel: {label}; n={args.n}, digit {args.digit}; device: {_device()}; torch threads {_threads()}")
    header = f"{'sampler':8} {'steps':>5} {'generate() s':>12} {'worker job s':>12} {'POST->PNG s':>12} {'overhead':>9}"
    print(header)
    print("-" * len(header))
    for name, params, seconds, worker_s, bare in results:
        overhead = f"{100 * (seconds - bare) / bare:+.0f}%"
        print(f"{name:8} {params['steps']:>5} {bare:>12.2f} {worker_s:>12.2f} {seconds:>12.2f} {overhead:>9}")
    print("worker job s: the worker's own time (model cached): generation, previews, PNG and GIF rendering.")
    return 0


def _worker_seconds(client: httpx.Client, job_id: str) -> float:
    with client.stream("GET", f"/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and '"succeeded"' in line:
                return float(json.loads(line[5:])["seconds"])
    return float("nan")


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
