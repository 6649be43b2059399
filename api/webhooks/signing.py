"""Standard Webhooks signatures (https://www.standardwebhooks.com): each delivery carries
``webhook-id`` (the same on every retry), ``webhook-timestamp`` (the attempt's time, seconds) and
``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256, keyed with the secret's bytes, of
``{id}.{timestamp}.{body}``. Receivers verify it with any Standard Webhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
        "content-type": "application/json",
    }
