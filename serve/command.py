"""``ddpm serve``: the whole stack on one machine — Redis (embedded unless ``REDIS_URL`` is
set), one worker process and the API — supervised, and stopped together by Ctrl-C.

The ``ddpm`` command finds this module through the ``ddpm.commands`` entry point.

The API and the worker run as child processes of their own (the API never imports torch);
they get their configuration through the environment, like in a container. A child that dies
is restarted (see :mod:`serve.supervisor`); the embedded Redis keeps its data in ``--data-dir``
(see :mod:`serve.redis_server`), so neither a restart of Redis nor of ``ddpm serve`` loses a
queued job or a result.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from serve.redis_server import DEFAULT_PORT, EmbeddedRedis, default_data_dir, free_port, pick_port, port_is_free
from serve.supervisor import (
    GaveUp,
    Hurry,
    ProcessChild,
    RestartPolicy,
    Supervisor,
    parent_death_signal,
    stop_process,
)

__all__ = ["add_parser", "api_command", "run", "stop_process", "worker_command"]

logger = logging.getLogger(__name__)

API_GRACE_S = 10.0
REDIS_START_TIMEOUT_S = 60.0  # a large AOF takes a while to load


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the generation service (Redis, a worker, the API and web page)",
        description="Run Redis (embedded unless REDIS_URL is set), one worker and the API with its web page; "
        "restart any of them that dies. Ctrl-C or SIGTERM stops them all.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="serve this checkpoint file (named by its file stem)")
    source.add_argument("--model-dir", type=Path, help="serve every *.safetensors in this directory")
    parser.add_argument(
        "--jobs-in-flight",
        type=int,
        default=None,
        help="jobs the worker holds at once, batched into one forward per step (default: DDPM_JOBS_IN_FLIGHT, else 16)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="where the embedded Redis keeps its data (append-only file), password and log "
        "(default %(default)s, from $XDG_DATA_HOME)",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help=f"port of the embedded Redis on 127.0.0.1 (default {DEFAULT_PORT} when free, else any free port; "
        "0: any free port)",
    )
    parser.add_argument(
        "--worker-grace",
        type=float,
        default=30.0,
        help="seconds a stopping worker may take to finish its job before it is killed; a killed job "
        "is run again at the next start (default 30)",
    )
    parser.set_defaults(run=run)


def worker_command(queue: str = "ddpm", loglevel: str = "INFO") -> list[str]:
    """The command line of one Celery worker. Its pool (threads, ``DDPM_JOBS_IN_FLIGHT`` of them)
    comes from the worker's own configuration."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app:app",
        "worker",
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


def _queue_name() -> str:
    """The broker queue the API sends jobs to (``DDPM_QUEUE_NAME``, read as the API reads it)."""
    from contract.settings import Settings

    return Settings().queue_name


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


def _worker_exited(env: dict[str, str]) -> Callable[[int], None]:
    """What to do when the worker process has died: take it off the live workers at once, so the
    next worker re-queues the jobs it held as soon as it starts (instead of after
    ``DDPM_WORKER_DEAD_AFTER_S`` without a heartbeat)."""

    def forget(pid: int) -> None:
        import redis

        from contract.layout import Keys, worker_name
        from contract.settings import Settings

        settings = Settings(redis_url=env["REDIS_URL"])
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.zrem(Keys(settings.key_prefix).workers, worker_name(pid))
        finally:
            client.close()

    return forget


class RedisChild:
    """The embedded Redis as a supervised child (restarted on the same port, password and data)."""

    name = "Redis server"

    def __init__(self, server: EmbeddedRedis) -> None:
        self.server = server

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def start(self) -> None:
        # SIGTERM when ddpm serve dies: Redis writes its append-only file and exits
        self.server.start(timeout=REDIS_START_TIMEOUT_S, preexec_fn=parent_death_signal(signal.SIGTERM))

    def poll(self) -> int | None:
        return self.server.poll()

    def stop(self, hurry: Hurry) -> None:
        if self.server.poll() is None:
            logger.info("stopping the Redis server (pid %s)", self.server.pid)
        self.server.stop(grace=2.0 if hurry() else 10.0)


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir/serve.lock`` while serving: two servers on one AOF would corrupt it."""
    from ddpm_core.errors import UsageError

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle = (data_dir / "serve.lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"another ddpm serve is using the data directory {data_dir}") from None
    return handle


def _redis_port(requested: int | None) -> int:
    from ddpm_core.errors import UsageError

    if requested is None:
        return pick_port(DEFAULT_PORT)
    if requested == 0:
        return free_port()
    if not port_is_free(requested):
        raise UsageError(f"--redis-port {requested}: the port is in use")
    return requested


def run(args: argparse.Namespace) -> int:
    from ddpm_core.errors import UsageError
    from serve.redis_server import RedisServerError

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
    if args.worker_grace < 0:
        raise UsageError("--worker-grace must be >= 0")
    if not port_is_free(args.port, args.host):
        raise UsageError(f"cannot listen on {args.host}:{args.port}: in use? (choose another with --port)")
    _warn_without_models(env)

    lock = None
    redis_log = None
    children: list = []
    if not env.get("REDIS_URL"):
        data_dir = args.data_dir.expanduser().resolve()
        lock = _lock_data_dir(data_dir)
        try:
            server = EmbeddedRedis(
                port=_redis_port(args.redis_port),
                data_dir=data_dir,
                # always: every write on disk before Redis answers (slower; tests use it)
                appendfsync=env.get("DDPM_REDIS_APPENDFSYNC", "everysec"),
            )
        except (RedisServerError, UsageError):
            lock.close()
            raise
        env["REDIS_URL"] = server.url
        redis_log = server.log_path
        children.append(RedisChild(server))
    else:
        logger.info("joining the Redis at REDIS_URL (not supervised by ddpm serve)")
    if args.jobs_in_flight is not None:
        if args.jobs_in_flight < 1:
            raise UsageError("--jobs-in-flight must be at least 1")
        env["DDPM_JOBS_IN_FLIGHT"] = str(args.jobs_in_flight)
    # compiled forwards are kept in the data directory: a second start is fast at once
    env.setdefault("DDPM_COMPILE_CACHE_DIR", str(args.data_dir.expanduser().resolve() / "compile-cache"))
    # the worker consumes the queue the API sends to (DDPM_QUEUE_NAME)
    worker = worker_command(queue=_queue_name())
    children.append(ProcessChild("worker", worker, env, grace=args.worker_grace, on_exit=_worker_exited(env)))
    children.append(ProcessChild("API", api_command(args.host, args.port), env, grace=API_GRACE_S))
    supervisor = Supervisor(children, RestartPolicy())

    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) == 2:
            logger.warning("second signal: stopping without waiting for running jobs")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"
    announce = _Announcer(base)
    try:
        try:
            supervisor.start()
        except RedisServerError as error:
            raise UsageError(str(error)) from None
        supervisor.run(lambda: bool(signals), announce)
        logger.info("stopping (%s)", signal.Signals(signals[0]).name)
        return 0
    except GaveUp:
        if redis_log is not None:
            logger.error("the embedded Redis logs to %s", redis_log)
        logger.error("ddpm serve: stopping everything (exit status 1); see the log above")
        return 1
    finally:
        supervisor.stop(lambda: len(signals) >= 2)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if lock is not None:
            lock.close()
        logger.info("stopped")


class _Announcer:
    """Say where the page is once the API first answers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.done = False
        self.next_try = 0.0

    def __call__(self) -> None:
        if self.done or time.monotonic() < self.next_try:
            return
        self.next_try = time.monotonic() + 0.5
        try:
            with urllib.request.urlopen(f"{self.base}/healthz", timeout=0.5) as response:
                self.done = response.status == 200
        except OSError:
            return
        if self.done:
            logger.info("ddpm serve: the page is at %s/ (API docs at %s/docs); Ctrl-C stops", self.base, self.base)
