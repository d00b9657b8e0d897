"""The byte stream a worker sends the hub over a Unix socket: one hello, then length-prefixed records.

Pure encoding and decoding, no I/O. A record carries the worker's own sequence number so that the hub
sees every message a worker had to drop (socket full, hub restarting) as a gap, without a side channel.
Decoded, a record is the model's `Row`; the sequence numbers are kept apart, as the first and the last of what
one chunk completed, which is all the gap check needs.
"""

from __future__ import annotations

import struct

from recorder.model.record import Row

MAGIC = b"IMEL"
HELLO = struct.Struct("<4sHI")  # magic, shard, worker pid
RECORD = struct.Struct("<IQqHB")  # payload length, sequence, receive ts_ns, conn, record kind
MAX_PAYLOAD = 64 << 20  # anything larger is a corrupt stream, not a message


class WireError(ValueError):
    """The stream is not what a worker sends (wrong magic, absurd length): the hub drops the connection."""


# The rows one chunk completed, and the sequence numbers of the first and of the last of them.
Decoded = tuple[list[Row], int, int]


def hello(shard: int, pid: int) -> bytes:
    return HELLO.pack(MAGIC, shard, pid)


def record_header(length: int, seq: int, ts_ns: int, conn: int, kind: int) -> bytes:
    return RECORD.pack(length, seq, ts_ns, conn, kind)


class Decoder:
    """Feeds on arbitrary chunks of the stream, yields whole records; remembers a partial one.

    The common case, a read that ends on a record boundary, is parsed straight from the chunk (one copy per
    payload); only a partial record is kept, and a large one is collected in a bytearray until it is whole.
    """

    __slots__ = ("_buf", "_need", "pid", "shard")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 0  # bytes the kept partial must reach before parsing is worth trying again
        self.shard: int | None = None
        self.pid: int | None = None

    def feed(self, data: bytes) -> Decoded | None:
        """The records `data` completed (None: none)."""
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return None
            data = bytes(buf)
            buf.clear()
        pos = 0
        end = len(data)
        if self.shard is None:
            if end < HELLO.size:
                self._keep(data, 0, HELLO.size)
                return None
            magic, shard, pid = HELLO.unpack_from(data, 0)
            if magic != MAGIC:
                raise WireError("not a recorder worker stream")
            self.shard, self.pid = shard, pid
            pos = HELLO.size
        unpack = RECORD.unpack_from
        head = RECORD.size
        rows: list[Row] = []
        append = rows.append
        first = last = 0
        while end - pos >= head:
            length, seq, ts, conn, kind = unpack(data, pos)
            if length > MAX_PAYLOAD:
                raise WireError(f"record of {length} bytes")
            start = pos + head
            stop = start + length
            if stop > end:
                self._keep(data, pos, head + length)
                break
            if not rows:
                first = seq
            last = seq
            append((ts, conn, kind, data[start:stop]))
            pos = stop
        else:
            if pos < end:
                self._keep(data, pos, head)
        return (rows, first, last) if rows else None

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        self._buf += memoryview(data)[pos:]
        self._need = need

    @property
    def pending(self) -> int:
        return len(self._buf)
