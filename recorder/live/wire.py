"""The byte stream a worker sends the hub over a Unix socket: one hello, then length-prefixed records.

Pure encoding and decoding, no I/O. A record carries the worker's own sequence number so that the hub
sees every message a worker had to drop (socket full, hub restarting) as a gap, without a side channel.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"IMEL"
HELLO = struct.Struct("<4sHI")  # magic, shard, worker pid
RECORD = struct.Struct("<IQqHB")  # payload length, sequence, receive ts_ns, conn, record kind
MAX_PAYLOAD = 64 << 20  # anything larger is a corrupt stream, not a message


class WireError(ValueError):
    """The stream is not what a worker sends (wrong magic, absurd length): the hub drops the connection."""


class LiveRecord(NamedTuple):
    seq: int
    ts_ns: int
    conn: int
    kind: int
    payload: bytes


def hello(shard: int, pid: int) -> bytes:
    return HELLO.pack(MAGIC, shard, pid)


def record_header(length: int, seq: int, ts_ns: int, conn: int, kind: int) -> bytes:
    return RECORD.pack(length, seq, ts_ns, conn, kind)


class Decoder:
    """Feeds on arbitrary chunks of the stream, yields whole records; remembers a partial one."""

    __slots__ = ("_buf", "pid", "shard")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.shard: int | None = None
        self.pid: int | None = None

    def feed(self, data: bytes) -> list[LiveRecord]:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        out: list[LiveRecord] = []
        if self.shard is None:
            if end < HELLO.size:
                return out
            magic, self.shard, self.pid = HELLO.unpack_from(buf, 0)
            if magic != MAGIC:
                raise WireError("not a recorder worker stream")
            pos = HELLO.size
        unpack = RECORD.unpack_from
        head = RECORD.size
        append = out.append
        while end - pos >= head:
            length, seq, ts, conn, kind = unpack(buf, pos)
            if length > MAX_PAYLOAD:
                raise WireError(f"record of {length} bytes")
            stop = pos + head + length
            if stop > end:
                break
            append(LiveRecord(seq, ts, conn, kind, bytes(buf[pos + head:stop])))
            pos = stop
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
