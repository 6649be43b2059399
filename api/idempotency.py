"""``Idempotency-Key`` on the endpoints that create jobs, as the IETF draft
(draft-ietf-httpapi-idempotency-key-header) describes it.

A client sends a unique key with a request it may retry. The first request with a key makes the
job; the same key with the same request (endpoint and body) gives that first answer again, the
same job with the same status code (``Idempotent-Replayed: true``), however often and however
concurrently it is sent: the job and the key's record are made in one Redis script. The same
key with another request is a 422. A refused request (invalid, rate limited, queue full) records
nothing, so its retry is judged afresh. Keys are kept ``DDPM_IDEMPOTENCY_TTL_S`` (24 h) and
scoped per API key (all clients share one scope where no keys are set); Redis holds only digests
of them.
"""

from __future__ import annotations

import hashlib
import json
import re

from fastapi import HTTPException
from pydantic import BaseModel

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# a Structured Field string ("..."), or the bare token most clients send
KEY_TEXT = re.compile(r"^[\x20-\x7e]{1,255}$")
DESCRIPTION = (
    "a unique key (up to 255 printable characters; the draft's quoted form is accepted) that makes retrying "
    "this request safe: the same key with the same body gives the first answer again and makes no new job; "
    "with another body it is a 422. Kept for DDPM_IDEMPOTENCY_TTL_S, per API key"
)


def parse_key(value: str | None) -> str | None:
    """The key sent in the header (its quotes removed), or None; 400 when it is malformed."""
    if value is None:
        return None
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not text or not KEY_TEXT.match(text):
        raise HTTPException(
            400, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters (optionally in double quotes)"
        )
    return text


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def fingerprint(endpoint: str, body: BaseModel) -> str:
    """The request's fingerprint: its endpoint and its body's fields as sent (key order and
    whitespace do not count)."""
    fields = body.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return digest(endpoint + "\n" + json.dumps(fields, sort_keys=True, separators=(",", ":")))
