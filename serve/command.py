"""``ddpm serve``: the whole stack on one machine — Redis (embedded unless ``REDIS_URL`` is
set), one worker process and the API — stopped together by Ctrl-C.

The ``ddpm`` command finds this module through the ``ddpm.commands`` entry point.

The API and the worker run as child processes of their own (the API never imports torch);
they get their configuration through the environment, like in a container.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the generation service (Redis, a worker, the API and web page)",
        description="Run Redis (embedded unless REDIS_URL is set), one worker and the API with its web page.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="serve this checkpoint file (named by its file stem)")
    source.add_argument("--model-dir", type=Path, help="serve every *.safetensors in this directory")
    parser.add_argument("--concurrency", type=int, default=1, help="generation processes in the worker (default 1)")
    parser.set_defaults(run=run)


def worker_command(concurrency: int = 1, queue: str = "ddpm", loglevel: str = "INFO") -> list[str]:
    """The command line of one Celery worker (prefork: CUDA starts only in the pool process)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app:app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--queues",
        queue,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"ddpm-{os.getpid()}@%h",
    ]


def api_command(host: str, port: int) -> list[str]:
    """The command line of the API server."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "info",
        "--timeout-graceful-shutdown",
        "3",
    ]


def stop_process(process: subprocess.Popen, name: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    logger.info("stopping %s", name)
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop in %.0f s; killing it", name, grace)
        process.kill()
        process.wait()


def _wait_http(url: str, timeout: float, processes: list[tuple[str, subprocess.Popen]]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"the {name} exited with code {process.returncode} at start")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


def _warn_without_models(env: dict[str, str]) -> None:
    """Say so at start when there is nothing to serve (the page would offer no model)."""
    from contract.settings import Settings

    if env.get("DDPM_CHECKPOINT"):
        return
    model_dir = Path(env.get("DDPM_MODEL_DIR") or Settings().model_dir)
    if not any(model_dir.glob("*.safetensors")):
        logger.warning(
            "no checkpoints (*.safetensors) in %s: jobs will be refused until one is there "
            "(use --checkpoint FILE or --model-dir DIR)",
            model_dir,
        )


def run(args: argparse.Namespace) -> int:
    from ddpm_core.errors import UsageError
    from serve.redis_server import EmbeddedRedis, RedisServerError

    env = dict(os.environ)
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise UsageError(f"checkpoint {args.checkpoint} does not exist")
        env["DDPM_CHECKPOINT"] = str(args.checkpoint.resolve())
        env.setdefault("DDPM_DEFAULT_MODEL", args.checkpoint.stem)
    if args.model_dir is not None:
        if not args.model_dir.is_dir():
            raise UsageError(f"model directory {args.model_dir} does not exist")
        env["DDPM_MODEL_DIR"] = str(args.model_dir.resolve())
    _warn_without_models(env)
    redis_server = None
    if not env.get("REDIS_URL"):
        try:
            redis_server = EmbeddedRedis().start()
        except RedisServerError as error:
            raise UsageError(str(error)) from None
        env["REDIS_URL"] = redis_server.url
    else:
        logger.info("joining the Redis at REDIS_URL")

    stopping = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[tuple[str, subprocess.Popen]] = []
    try:
        children.append(("worker", subprocess.Popen(worker_command(args.concurrency), env=env, start_new_session=True)))
        children.append(("API", subprocess.Popen(api_command(args.host, args.port), env=env, start_new_session=True)))
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        base = f"http://{host}:{args.port}"
        if _wait_http(f"{base}/healthz", 60, children):
            logger.info("ddpm serve: the page is at %s/ (API docs at %s/docs); Ctrl-C stops", base, base)
        while stopping["signal"] is None:
            for name, process in children:
                if process.poll() is not None:
                    logger.error("the %s exited with code %s; stopping", name, process.returncode)
                    return 1
            time.sleep(0.2)
        logger.info("stopping (signal %s)", stopping["signal"])
        return 0
    except RuntimeError as error:
        logger.error("%s", error)
        return 1
    finally:
        for name, process in reversed(children):
            stop_process(process, name)
        if redis_server is not None:
            redis_server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("stopped")
