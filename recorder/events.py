"""Connection events: records of kind EVENT, so that every gap in the data is explained in the data.

The payload is a small JSON object, `{"event": "<type>", ...}`; readers in any language can parse it.
Never put a token, password or a URL with credentials in one: callers pass URLs through `redact_url`.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson


class Event(enum.StrEnum):
    WORKER_STARTED = "worker_started"  # a worker process began (after a restart too): pid, contracts
    WORKER_STOPPING = "worker_stopping"  # clean shutdown began: reason
    CONNECTING = "connecting"  # a connection attempt: url, contracts, attempt
    OPENED = "opened"  # upgrade accepted: url, contracts, status
    CLOSED = "closed"  # close code, reason, frames/bytes received on it
    ERROR = "error"  # connect/handshake/socket error text (never a secret)
    RECONNECT = "reconnect"  # backoff delay before the next attempt
    REJECTED = "rejected"  # contracts the server refused (1008), now excluded
    TOKEN_REFRESHED = "token_refreshed"  # a fresh token was obtained (the token itself is never recorded)
    OVERSIZED = "oversized"  # a message over --max-frame-bytes: its size and first bytes, not the message
    MALFORMED = "malformed"  # a protocol-level oddity worth seeing in the data (e.g. stray continuation)
    BACKPRESSURE = "backpressure"  # reading paused/resumed because the disk could not keep up
    IDLE_TIMEOUT = "idle_timeout"  # nothing received for --idle-timeout seconds; reconnecting
    STALL = "stall"  # no message for --stall-alert seconds during a trading session: silent_s, after_s
    STALL_OVER = "stall_over"  # messages arrive again (or the session ended)
    DISK = "disk"  # free space crossed --warn-free-gb or --min-free-gb: level (low, critical, ok), free_bytes
    RELOAD = "reload"  # a reload (SIGHUP) changed the shard's contracts: added, removed, contracts (the new count)
    # A group's connections close for good (group, contracts, reason): a reload removed its contracts, or a refusal
    # split it (to find the refused contract) or excluded it.
    UNSUBSCRIBED = "unsubscribed"


def encode_event(event: Event | str, **fields: Any) -> bytes:
    return orjson.dumps({"event": str(event), **fields})


def decode_event(payload: bytes) -> dict[str, Any]:
    """The event object; a payload that is not one becomes {"event": "unparseable", "raw": ...}."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {"event": "unparseable", "raw": payload.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"event": "unparseable", "raw": value}
