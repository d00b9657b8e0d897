"""Keeping secrets out of everything printed, logged or recorded."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

_SECRET_KEYS = re.compile(r"(token|auth|pass|secret|key|jwt|signature|sig)", re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
MASK = "***"


def redact_url(url: str) -> str:
    """The URL without userinfo and with secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc.rsplit("@", 1)[-1]
    # Rebuilt field by field, not re-encoded: the printed URL must stay the one that was used.
    fields = []
    for field in parts.query.split("&") if parts.query else []:
        key = field.split("=", 1)[0]
        fields.append(f"{key}={MASK}" if _SECRET_KEYS.search(unquote(key)) else field)
    query = "&".join(fields)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Mask the given secrets and anything shaped like a JWT."""
    # Longest first, so a secret that contains another is masked whole.
    for s in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(s, MASK)
    return _JWT.sub(MASK, text)
