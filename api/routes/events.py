"""``GET /jobs/{id}/events``: the job's Redis stream as Server-Sent Events.

Each SSE ``id`` is the stream entry id, so a client reconnecting with ``Last-Event-ID`` gets
every later entry and nothing twice. The stream ends after the terminal event; a finished job
replays its whole history, and one reconnecting after the end gets the terminal event again. Reads
block briefly so a departed client frees its connection soon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated

import redis.exceptions
from fastapi import APIRouter, Header, HTTPException, Query, Request
from sse_starlette.sse import EventSourceResponse

from api import deps
from api.errors import responses
from api.routes.jobs import READ, JobId, load_job
from api.store import AsyncJobStore
from contract.layout import TERMINAL_EVENTS, JobRecord

logger = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])
STREAM_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")  # Last-Event-ID, as OpenAPI declares it
MAX_ID_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers
BLOCK_MS = 5000
PREVIEW_EVENT = "preview"  # a PNG data URI every few steps: sent only to a stream that asks (?previews=true)
BATCH = 200


async def job_events(
    request: Request, store: AsyncJobStore, job_id: str, after: str, previews: bool = False
) -> AsyncIterator[dict]:
    """SSE events for ``job_id`` after stream id ``after`` until (and including) a terminal one;
    ``preview`` events (base64 PNGs) only when ``previews`` asks for them.
    A client that reconnects after the end (``after`` at or past the terminal event) gets the
    terminal event again at once, so it always learns how the job ended."""
    last = after
    block_ms = 0  # the first read does not wait: a finished job answers at once
    try:
        while True:
            if await request.is_disconnected():
                return
            entries = await store.events_after(job_id, last, count=BATCH, block_ms=block_ms)
            block_ms = BLOCK_MS
            if not entries:
                record = await store.get(job_id)
                if record is None:
                    yield {"event": "failed", "data": json.dumps({"status": "expired", "error": "job expired"})}
                    return
                if record.status.terminal and not await store.events_after(job_id, last, count=1, block_ms=0):
                    yield await _ended(store, record)  # nothing newer remains: how it ended, again
                    return
                continue
            for entry in entries:
                last = entry.id
                if entry.event == PREVIEW_EVENT and not previews:
                    continue
                yield {"id": entry.id, "event": entry.event, "data": entry.data}
                if entry.event in TERMINAL_EVENTS:
                    return
                # a turn of the event loop between events: when the client has gone, the failed
                # write's connection_lost runs now and the server writes no more (a batch written
                # in one go hit the closed socket again and again: asyncio's "socket.send()
                # raised exception." once per write after the fifth)
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        logger.debug("event stream of job %s closed by the client", job_id)
        raise
    except redis.exceptions.ResponseError as error:  # never cut a stream off mid-response
        logger.warning("event stream of job %s: Redis refused a read after %s: %s", job_id, last, error)
        yield {"event": "error", "data": json.dumps({"error": "the event stream could not be read"})}


async def _ended(store: AsyncJobStore, record: JobRecord) -> dict:
    """The terminal event of a finished job, with its own id; made from the record when its
    stream no longer holds it."""
    entry = await store.terminal_event(record.id)
    if entry is not None:
        return {"id": entry.id, "event": entry.event, "data": entry.data}
    data = {"status": record.status.value, **({"error": record.error} if record.error else {})}
    return {"event": record.status.value, "data": json.dumps(data)}


def parse_event_id(text: str) -> str:
    """A ``Last-Event-ID`` of the declared pattern (:data:`STREAM_ID`, in OpenAPI too) as a stream
    id Redis accepts: a part past Redis' range is clamped to it (an id after every event); 400
    for anything else."""
    match = STREAM_ID.match(text.strip())
    if match is None:
        shown = text if len(text) <= 60 else text[:60] + "..."
        raise HTTPException(400, f"Last-Event-ID {shown!r} is not an event id of this API (e.g. 1712345678901-0)")
    ms, seq = (int(part) for part in match.groups())
    if ms > MAX_ID_PART:
        ms, seq = MAX_ID_PART, MAX_ID_PART
    return f"{ms}-{min(seq, MAX_ID_PART)}"


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    dependencies=READ,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the job's events"},
        **responses(400, 401, 404),
    },
)
async def stream_events(
    job_id: JobId,
    request: Request,
    store: deps.StoreDep,
    previews: Annotated[
        bool, Query(description="also send preview events (a base64 PNG of the predicted result every few steps)")
    ] = False,
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            description="resume after this event (the SSE id of one this stream sent)",
            json_schema_extra={"pattern": STREAM_ID.pattern},
        ),
    ] = None,  # type: ignore[assignment]  # optional; declared a string: a header is never null
) -> EventSourceResponse:
    """queued, running, progress (step, total, eta_s), redraw, with ``?previews=true`` preview
    (a PNG data URI every few steps), and one terminal event (succeeded, failed or cancelled)."""
    await load_job(store, job_id)
    after = "0-0"
    if last_event_id:
        after = parse_event_id(last_event_id)
    return EventSourceResponse(
        job_events(request, store, job_id, after, previews),
        ping=10,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
