"""ASGI middleware of the API: a bound on request bodies, and ``OPTIONS`` answers.

* :class:`BodyLimit` answers 413 to a body over the limit without holding more than the limit
  in memory: a declared ``Content-Length`` over it is refused before a byte is read, and a
  body sent without one (chunked) is counted as it arrives and refused once it passes the limit.
* :class:`AllowedMethods` answers a plain ``OPTIONS`` (not a CORS preflight) with every method
  the path offers in ``Allow``, across all routes that share the path.
"""

from __future__ import annotations

import json

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_payload
from contract.metrics import Refusal

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            + list(headers),
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        message = f"the request body is over the limit of {self.max_bytes} bytes"
        too_large = error_payload(scope["path"], 413, message, reason=Refusal.TOO_LARGE)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, error_payload(scope["path"], 400, "Content-Length is not a number"))
                return
            if length > self.max_bytes:
                await _send_json(send, 413, too_large, [(b"connection", b"close")])
                return
        # read the body here, counting: never more than max_bytes is held
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_json(send, 413, too_large, [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _endpoints(routes: list) -> list:
    """Every route with methods, looking into included routers."""
    found = []
    for route in routes:
        if getattr(route, "methods", None):
            found.append(route)
        inner = getattr(getattr(route, "original_router", None), "routes", None) or getattr(route, "routes", None)
        if inner:
            found.extend(_endpoints(inner))
    return found


class AllowedMethods:
    """Answer ``OPTIONS`` with the ``Allow`` header of every route on the path."""

    def __init__(self, app: ASGIApp, router_app: object) -> None:
        self.app = app
        self.router_app = router_app  # the FastAPI app whose routes are looked up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        if scope["type"] != "http" or scope["method"] != "OPTIONS" or b"access-control-request-method" in headers:
            await self.app(scope, receive, send)
            return
        methods: set[str] = set()
        for route in _endpoints(self.router_app.routes):
            match, _ = route.matches({**scope, "method": "GET"})
            if match is not Match.NONE:
                methods |= set(route.methods)
        if not methods:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
        await send({"type": "http.response.body", "body": b""})
