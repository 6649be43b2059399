"""Compiling the engines' forward buckets in the background, while they serve eager forwards.

A worker is ready as soon as its default model is loaded: its engine runs every batch eagerly
at first. One :class:`BucketCompiler` thread per worker process then compiles the buckets of
every engine, one at a time, the most used first (ties: the smallest), and installs each into
the engine's :class:`~ddpm_core.compiled.BucketedForward` as soon as it is built; the next
forward of that size runs it. Nothing here holds a lock that a tick, a heartbeat or a job waits
for.

Two ways to compile, by device (:func:`strategy_for`):

- **CPU: out of process** (``aot``). A bucket is built as an AOTInductor package by a child
  process (``python -m ddpm_core.aot``, at a lower scheduling priority, so the eager forwards of
  running jobs keep the cores), into ``DDPM_COMPILE_CACHE_DIR``; the worker only loads the built
  package (milliseconds). Packages are named by weights, bucket, device, torch and machine, so a
  restart finds them there and is fast at once. Stopping the compiler kills a running build.
- **CUDA: in process** (``inprocess``). ``torch.compile`` with CUDA graphs must run on the thread
  that calls the forward: each bucket is compiled and warmed (graphs recorded and replayed) on
  the engine's thread between two ticks, which holds that engine's jobs for the compile's
  duration. Inductor's cache (``TORCHINDUCTOR_CACHE_DIR``, under the same directory) makes a
  restart's compiles short.

A build that fails (no C++ compiler, an export the model does not support) stops compiling that
engine: it keeps serving eager forwards, and the error is in the worker's stats (``/readyz``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ddpm_core.aot import EXIT_WEIGHTS_CHANGED, load_package, package_name
from ddpm_core.checkpoint import LoadedCheckpoint
from ddpm_core.compiled import BucketedForward
from ddpm_core.device import keep_torch_to_this_thread
from worker.engine import Engine

logger = logging.getLogger(__name__)
BUILD_NICENESS = 10  # the child's scheduling priority, below the worker's (0)
STRATEGIES = ("aot", "inprocess")


def strategy_for(device_type: str) -> str:
    """How buckets are compiled on a device type: 'aot' (out of process) on the CPU,
    'inprocess' (on the engine thread, CUDA graphs) elsewhere."""
    return "aot" if device_type == "cpu" else "inprocess"


class BuildFailed(RuntimeError):
    """A bucket's build failed; the engine keeps its eager forward."""


@dataclass
class _Target:
    """One engine whose buckets are compiled."""

    name: str
    loaded: LoadedCheckpoint
    engine: Engine
    error: str | None = None
    failed_buckets: set[int] = field(default_factory=set)

    @property
    def forward(self) -> BucketedForward:
        return self.engine.forward  # type: ignore[return-value]

    def next_bucket(self) -> int | None:
        """The bucket to compile next: the most used, then the smallest; None when done."""
        forward = self.forward
        todo = [bucket for bucket in forward.buckets if bucket not in forward.compiled_buckets]
        if self.error is not None or self.engine.closed or not todo:
            return None
        return min(todo, key=lambda bucket: (-forward.bucket_uses.get(bucket, 0), bucket))


class BucketCompiler(threading.Thread):
    """Compiles the buckets of the engines given to :meth:`add`, one at a time, in the background.

    Args:
        cache_dir: where packages (``aot/``) and inductor's cache (``inductor/``) live.
        strategy: 'aot' or 'inprocess' (see :func:`strategy_for`).
    """

    def __init__(self, cache_dir: Path, strategy: str) -> None:
        super().__init__(name="ddpm-compiler", daemon=True)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.cache_dir = Path(cache_dir)
        self.strategy = strategy
        self._targets: list[_Target] = []
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopped = threading.Event()
        self._build: subprocess.Popen | None = None

    # ------------------------------------------------------------------ any thread

    def add(self, name: str, loaded: LoadedCheckpoint, engine: Engine) -> None:
        """Compile ``engine``'s buckets (its forward must be a :class:`BucketedForward`)."""
        with self._lock:
            self._targets.append(_Target(name, loaded, engine))
        self._wakeup.set()

    def errors(self) -> list[str]:
        """Why compiling stopped for some engines (one line each)."""
        with self._lock:
            return [f"{target.name}: {target.error}" for target in self._targets if target.error]

    def stop(self, timeout: float = 2.0) -> None:
        """Stop at once: a running build is killed; waits up to ``timeout`` s for the thread."""
        self._stopped.set()
        self._wakeup.set()
        build = self._build
        if build is not None and build.poll() is None:
            _kill_group(build)
        if self.is_alive():
            self.join(timeout)

    # ------------------------------------------------------------------ compiler thread

    def run(self) -> None:
        keep_torch_to_this_thread()  # loading packages here must not make a second OpenMP team
        while not self._stopped.is_set():
            with self._lock:
                self._targets = [target for target in self._targets if not target.engine.closed]
                work = [(target, target.next_bucket()) for target in self._targets]
            work = [(target, bucket) for target, bucket in work if bucket is not None]
            if not work:
                self._wakeup.wait(1.0)
                self._wakeup.clear()
                continue
            target, bucket = work[0]
            try:
                seconds = self._compile(target, bucket)
            except BuildFailed as error:
                if self._stopped.is_set():
                    return
                target.error = str(error)
                logger.error("compiling %s stopped; it keeps serving eager forwards: %s", target.name, error)
                continue
            except Exception as error:  # never let a compile take the worker down
                target.error = f"{type(error).__name__}: {error}".splitlines()[0]
                logger.exception("compiling %s failed; it keeps serving eager forwards", target.name)
                continue
            forward = target.forward
            logger.info(
                "model %s: bucket %d compiled in %.1f s (%d of %d buckets compiled)",
                target.name,
                bucket,
                seconds,
                len(forward.compiled_buckets),
                len(forward.buckets),
            )

    def _compile(self, target: _Target, bucket: int) -> float:
        started = time.perf_counter()
        if self.strategy == "inprocess":
            target.engine.call_on_engine_thread(lambda: target.forward.warmup([bucket]))
            return time.perf_counter() - started
        device = target.forward.device
        path = self.cache_dir / "aot" / package_name(target.loaded.weights_sha256, bucket, device.type)
        if not path.is_file():
            self._run_build(target, bucket, path)
        compiled = load_package(path, device)
        target.forward.install(bucket, compiled)
        return time.perf_counter() - started

    def _run_build(self, target: _Target, bucket: int, path: Path) -> None:
        """Build one package in a child process (lower priority, killed with the worker)."""
        command = [
            sys.executable,
            "-m",
            "ddpm_core.aot",
            "--checkpoint",
            str(target.loaded.path),
            "--weights-sha256",
            target.loaded.weights_sha256,
            "--bucket",
            str(bucket),
            "--out",
            str(path),
            "--device",
            str(target.forward.device),
            "--parent-pid",
            str(os.getpid()),
        ]
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(self.cache_dir / "inductor"))
        log = self.cache_dir / "build.log"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # the build computes on this machine's cores: the device thread leaves it one meanwhile
        lender = target.engine.device_thread if target.forward.device.type == "cpu" else None
        if lender is not None:
            lender.lend_cores(1)
        try:
            status = self._build_in_child(command, env, log)
        finally:
            if lender is not None:
                lender.lend_cores(0)
        if status == EXIT_WEIGHTS_CHANGED:
            raise BuildFailed(f"{target.loaded.path.name} was replaced; its old weights stay eager")
        if status != 0:
            raise BuildFailed(f"the bucket-{bucket} build exited with status {status}: {_last_error(log)}")

    def _build_in_child(self, command: list[str], env: dict[str, str], log: Path) -> int:
        """Run ``command`` at a lower priority, killed when the compiler stops; its exit status."""
        with log.open("ab") as output:
            self._build = subprocess.Popen(
                command,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self._build.pid, BUILD_NICENESS)
            while True:
                try:
                    status = self._build.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if self._stopped.is_set():
                        _kill_group(self._build)
                        raise BuildFailed("stopped") from None
        finally:
            self._build = None
        return status


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _last_error(log: Path) -> str:
    """The last line of the build log that names an error (e.g. no C++ compiler)."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return "see the build log"
    for line in reversed(lines):
        if "Error" in line or "error:" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"
