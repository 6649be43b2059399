"""An HTTP client of the service's API, for the terminal client: submit a job (with an
``Idempotency-Key``, so a retry after a dropped connection makes no second job), follow its
Server-Sent Events (resuming with ``Last-Event-ID`` after a dropped connection: no event is lost
or repeated), cancel it, read it and download its results. Errors a user can meet (no server,
a wrong key, a refused request) become :class:`ServiceError` with a one-line message.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

logger = logging.getLogger(__name__)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
SUBMIT_TRIES = 3  # a submission lost on the way is sent again with the same Idempotency-Key
RECONNECT_TRIES = 20  # an event stream that drops is resumed this many times in a row at most


class ServiceError(Exception):
    """Something a user can fix or should know, in one line."""


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: its type, its JSON data and its id (the stream entry id)."""

    event: str
    data: dict[str, Any]
    id: str


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        return str(inner.get("message") or body)
    return str(body)


class ServiceClient:
    """The API at ``server``, with an API key if given."""

    def __init__(self, server: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, trust_env=True)
        self.reconnects = 0  # event streams resumed after a dropped connection

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **options)
        except httpx.ConnectError as error:
            raise ServiceError(f"cannot reach the server at {self.server}: {error}") from None
        except httpx.TimeoutException:
            raise ServiceError(f"the server at {self.server} did not answer in time") from None
        self._raise_for(response)
        return response

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        if response.status_code == 401:
            hint = "give a valid one with --api-key or DDPM_API_KEY"
            raise ServiceError(f"the server refused the API key ({_message(response)}): {hint}")
        if response.status_code == 429:
            retry = response.headers.get("retry-after")
            later = f" (retry after {retry} s)" if retry else ""
            raise ServiceError(f"refused for now: {_message(response)}{later}")
        raise ServiceError(f"the server answered {response.status_code}: {_message(response)}")

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /generate``; the accepted job (id, status, queue position, links)."""
        key = uuid.uuid4().hex
        for attempt in range(1, SUBMIT_TRIES + 1):
            try:
                response = self.http.post("/generate", json=body, headers={"Idempotency-Key": key})
            except httpx.ConnectError as error:
                raise ServiceError(f"cannot reach the server at {self.server}: {error}") from None
            except httpx.TransportError as error:  # sent, but the answer was lost: the same key makes no second job
                if attempt == SUBMIT_TRIES:
                    raise ServiceError(f"the server at {self.server} did not answer: {error}") from None
                logger.warning("no answer to the submission (%s); sending it again", error)
                time.sleep(0.5 * attempt)
                continue
            self._raise_for(response)
            return response.json()
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def download(self, path: str, target: Path) -> int:
        """Write the resource at ``path`` to ``target``; its size."""
        data = self._request("GET", path).content
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return len(data)

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events until its terminal one. A dropped connection is resumed with
        ``Last-Event-ID`` (so no event is lost, and none comes twice)."""
        last, seen, failures = last_event_id, set(), 0
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with connect_sse(
                    self.http, "GET", f"/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(30, read=60)
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        self._raise_for(source.response)
                    for sse in source.iter_sse():
                        failures = 0
                        if sse.id:
                            if sse.id in seen:
                                continue
                            seen.add(sse.id)
                            last = sse.id
                        data = json.loads(sse.data) if sse.data else {}
                        yield Event(sse.event, data if isinstance(data, dict) else {"value": data}, sse.id)
                        if sse.event in TERMINAL:
                            return
                failures += 1  # closed before the job's end (a proxy's timeout, say): resume
                if failures > RECONNECT_TRIES:
                    raise ServiceError("the event stream keeps closing before the job's end")
            except httpx.ConnectError as error:
                failures += 1
                if failures > RECONNECT_TRIES:
                    raise ServiceError(f"lost the server at {self.server}: {error}") from None
            except httpx.TransportError as error:  # dropped mid-stream: resume after the last event
                failures += 1
                if failures > RECONNECT_TRIES:
                    raise ServiceError(f"the event stream keeps dropping: {error}") from None
                logger.debug("event stream dropped after %s (%s); resuming", last, error)
            self.reconnects += 1
            time.sleep(min(5.0, 0.1 * 2**failures))
