"""`Nats-Msg-Id` for each published message: its dedupe digest, numbered when the same bytes repeat.

JetStream stores one message per Msg-Id within the stream's duplicate window, so that recorders on several hosts
publishing the same feed store each message once. A Msg-Id that were only the payload's digest would also store
once a message the feed itself sent twice (the same contract, book and microsecond timestamp: ime-sim does this
about once in 200 messages at 100k msgs/s), which the recording keeps twice: the stream would hold less than the
recording. As `ime-segments merge` and `--redundancy` do (copies across connections collapse, repeats within one
do not), the k-th repeat of the same bytes within a recorder gets `<digest>-k`: every recorder that saw both
copies numbers them alike, and the stream holds what the recordings hold.

Repeats are counted over a recent window (two generations of `window_s`, each at most `max_entries` digests, so
memory stays bounded at any rate): an exact repeat more than one to two windows after the last copy gets the bare
digest again, and the stream keeps it once. The window is several times a recording's dedupe window (2 s by
default), so that a repeat the recording keeps as a message of its own is numbered even when it reaches the hub a
little later than it reached the worker; at 100k msgs/s the entry cap shortens it to about a second.
"""

from __future__ import annotations

import time
from binascii import hexlify
from collections.abc import Callable

from recorder.segment.dedupe import digest


def msg_id(payload: bytes) -> str:
    """The Msg-Id of a message's first occurrence: its dedupe digest (MsgIds numbers the repeats)."""
    return hexlify(digest(payload)).decode()


class MsgIds:
    __slots__ = ("_clock", "_current", "_max", "_previous", "_rotate_at", "_window")

    def __init__(self, window_s: float = 6.0, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._max = max_entries
        self._clock = clock
        self._current: dict[bytes, int] = {}
        self._previous: dict[bytes, int] = {}
        self._rotate_at = clock() + window_s

    def __call__(self, payload: bytes) -> bytes:
        """The Msg-Id of the next message with these bytes: hex digest, then `-1`, `-2`, … for its repeats."""
        current = self._current
        now = self._clock()
        if len(current) >= self._max or now >= self._rotate_at:
            # What the current generation holds is from before its rotation was due: after a quiet window more,
            # it is older than a window and is dropped with the previous one.
            self._previous = {} if now >= self._rotate_at + self._window else current
            current = self._current = {}
            self._rotate_at = now + self._window
        key = digest(payload)
        seen = current.get(key)
        if seen is None:
            seen = self._previous.get(key, 0)
        current[key] = seen + 1
        hexed = hexlify(key)
        return hexed if not seen else hexed + b"-%d" % seen
