"""Clients that leave an event stream are no warning: a fuzzing run that dropped hundreds of SSE
clients left hundreds of asyncio "socket.send() raised exception." lines in the API's log (the
replay of a finished job's events was written in one go into the closed socket)."""

from __future__ import annotations

import socket
import struct
import time

import httpx

from tests.service.conftest import ARTIFACTS, wait_job


def drop_clients(base_url: str, job_id: str, count: int) -> None:
    """``count`` clients of the job's event stream per way of leaving: closing at once, resetting
    the connection at once, and resetting it after the first bytes of the answer."""
    host, port = base_url.split("//", 1)[1].rsplit(":", 1)
    request = f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    for way in ("close", "reset", "reset after reading"):
        for _ in range(count):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(request)
                if way == "reset after reading":
                    sock.recv(300)
                if way != "close":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_clients_dropping_event_streams_leave_no_warning(client: httpx.Client, base_url: str) -> None:
    # a finished job with a long history: every stream replays it at once
    job_id = client.post("/generate", json={"n": 2, "sampler": "ddim", "steps": 100, "seed": 1}).json()["id"]
    assert wait_job(client, job_id)["status"] == "succeeded"
    log = ARTIFACTS / "api.log"
    start = log.stat().st_size
    drop_clients(base_url, job_id, count=30)
    time.sleep(1)  # the server's writes into the closed sockets
    assert client.get("/healthz").status_code == 200
    written = log.read_bytes()[start:].decode(errors="replace")
    assert written.count('/events HTTP/1.1" 200') >= 30, written[-2000:]  # those that read were answered
    assert "socket.send() raised exception" not in written, written[-2000:]
