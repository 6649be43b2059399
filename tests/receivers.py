"""Real HTTP listeners on 127.0.0.1 for the webhook tests: a receiver that answers each request as
scripted and records it, and the count of TCP connections any listener accepted (so a test can
prove a refused URL was never contacted)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    """One request a receiver got."""

    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A listener on 127.0.0.1: answers the n-th request with ``script[n]`` (the last one after
    that): an HTTP status, ``("redirect", url)``, ``("sleep", seconds)`` or ``("big", bytes)``."""

    script: list = field(default_factory=lambda: [200])
    deliveries: list[Delivery] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    index = len(receiver.deliveries)
                    receiver.deliveries.append(
                        Delivery({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                action = receiver.script[min(index, len(receiver.script) - 1)]
                if isinstance(action, int):
                    self.send_response(action)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                elif action[0] == "redirect":
                    self.send_response(307)
                    self.send_header("location", action[1])
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif action[0] == "sleep":
                    time.sleep(action[1])
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif action[0] == "big":
                    self.send_response(500)
                    self.send_header("content-length", str(action[1]))
                    self.end_headers()
                    with contextlib.suppress(OSError):  # the sender stops reading, as it should
                        self.wfile.write(b"x" * action[1])

            do_GET = do_POST  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request, client_address):  # noqa: ANN001
                with receiver._lock:
                    receiver.connections += 1
                super().process_request(request, client_address)

        self._lock = threading.Lock()
        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.deliveries)} deliveries after {timeout} s; expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
