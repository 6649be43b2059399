"""``GET /jobs/{id}/events``: the job's Redis stream as Server-Sent Events.

Each SSE ``id`` is the stream entry id, so a client reconnecting with ``Last-Event-ID`` gets
every later entry and nothing twice. The stream ends after the terminal event; a finished job
replays its whole history. Reads block briefly so a departed client frees its connection soon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from sse_starlette.sse import EventSourceResponse

from api import deps
from api.routes.jobs import load_job
from api.store import TERMINAL, AsyncJobStore

logger = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])
STREAM_ID = re.compile(r"^\d+-\d+$")
BLOCK_MS = 5000
BATCH = 200


async def job_events(request: Request, store: AsyncJobStore, job_id: str, after: str) -> AsyncIterator[dict]:
    """SSE events for ``job_id`` after stream id ``after`` until (and including) a terminal one."""
    key = store.keys.events(job_id)
    last = after
    try:
        while True:
            if await request.is_disconnected():
                return
            reply = await store.client.xread({key: last}, count=BATCH, block=BLOCK_MS)
            if not reply:
                # nothing new: stop if the job is gone, or ended before ``after`` (already delivered)
                record = await store.get(job_id)
                if record is None:
                    yield {"event": "failed", "data": json.dumps({"status": "expired", "error": "job expired"})}
                    return
                if record.get("status") in TERMINAL and not await store.client.xread({key: last}, count=1):
                    return
                continue
            for entry_id, fields in reply[0][1]:
                last = entry_id
                event = fields.get("event", "message")
                yield {"id": entry_id, "event": event, "data": fields.get("data", "{}")}
                if event in TERMINAL:
                    return
    except asyncio.CancelledError:
        logger.debug("event stream of job %s closed by the client", job_id)
        raise


@router.get(
    "/jobs/{job_id}/events", response_class=EventSourceResponse, responses={200: {"content": {"text/event-stream": {}}}}
)
async def stream_events(
    job_id: str,
    request: Request,
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
    store: AsyncJobStore = Depends(deps.store),
) -> EventSourceResponse:
    """queued, running, progress (step, total, eta_s), preview (PNG data URI) and one terminal
    event (succeeded, failed or cancelled)."""
    await load_job(store, job_id)
    after = "0-0"
    if last_event_id:
        if not STREAM_ID.match(last_event_id.strip()):
            raise HTTPException(400, f"Last-Event-ID {last_event_id!r} is not an event id of this API")
        after = last_event_id.strip()
    return EventSourceResponse(
        job_events(request, store, job_id, after),
        ping=10,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
