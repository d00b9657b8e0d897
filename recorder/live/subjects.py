"""NATS subjects for the live feed: `<prefix>.<endpoint kind>.<contract token>`, e.g. `ime.id.1001`.

A NATS subject token may not hold `.`, `*`, `>` or whitespace, and tools handle non-ASCII poorly, while
IME contract names are free text (Persian letters, spaces, `/`, `.`). So a contract becomes a token by
percent-encoding its UTF-8 bytes: every byte outside `A-Z a-z 0-9 - _` is written `%XX` (upper-case hex).
The mapping is one to one and reversible (`contract_of`); plain ids such as `1001` stay as they are.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

DEFAULT_PREFIX = "ime"
MSG_ID_HEADER = "Nats-Msg-Id"  # hex of the payload's dedupe digest, `-k` for its k-th repeat (live/msgid.py)
RECEIVE_HEADER = "Ime-Receive-Ns"  # the recorder's receive time, epoch nanoseconds
_SAFE = "-_"  # quote() keeps ASCII letters and digits, plus these; `.`, `~` and `%` are escaped too


def contract_token(contract: str) -> str:
    token = quote(contract, safe=_SAFE)
    # quote() leaves `.` and `~` alone by RFC 3986; a `.` would split the subject, so escape both.
    return token.replace(".", "%2E").replace("~", "%7E") if ("." in token or "~" in token) else token


def contract_of(token: str) -> str:
    return unquote(token)


def subject_for(kind: str, contract: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}.{kind}.{contract_token(contract)}"


def stream_subjects(prefix: str = DEFAULT_PREFIX) -> list[str]:
    return [f"{prefix}.>"]


def filter_subject(contract: str, kind: str | None = None, prefix: str = DEFAULT_PREFIX) -> str:
    """The subject a consumer filters on: one endpoint kind, or either (`*`)."""
    return f"{prefix}.{kind or '*'}.{contract_token(contract)}"
