"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built by hand so many go out in one write.

Server frames are never masked, so a frame is a 2-, 4- or 10-byte header followed by the payload as is.
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

FIN = 0x80
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")


def frame_header(length: int, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    if length < 0:
        raise ValueError("negative payload length")
    first = (FIN if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _U16.pack(first, 126, length)
    return _U64.pack(first, 127, length)


# Nearly every market message is a FIN text frame of a few hundred bytes: look its header up, don't build it.
TEXT_HEADERS: tuple[bytes, ...] = tuple(frame_header(n) for n in range(8192))


def text_header(length: int) -> bytes:
    """The header of a single-frame text message of `length` bytes."""
    return TEXT_HEADERS[length] if length < 8192 else frame_header(length)


def frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    if opcode >= OP_CLOSE and (len(payload) > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    return frame_header(len(payload), opcode, fin) + payload


def fragments(payload: bytes, parts: int, opcode: int = OP_TEXT) -> bytes:
    """One message as `parts` frames: the first with `opcode`, the rest CONTINUATION, FIN on the last.

    Cuts fall on byte boundaries, possibly inside a UTF-8 sequence: RFC 6455 validates text only once the
    message is reassembled, so a receiver that decodes fragments one by one is the one at fault.
    """
    parts = max(1, min(parts, len(payload) or 1))
    bounds = [len(payload) * i // parts for i in range(parts + 1)]
    out = bytearray()
    for i in range(parts):
        out += frame_header(bounds[i + 1] - bounds[i], opcode if i == 0 else OP_CONTINUATION, i == parts - 1)
        out += payload[bounds[i]:bounds[i + 1]]
    return bytes(out)


def truncate_utf8(text: str, limit: int) -> bytes:
    """`text` encoded, cut to at most `limit` bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + truncate_utf8(reason, MAX_CLOSE_REASON)


def parse_frames(data: bytes | bytearray | memoryview) -> list[tuple[int, bool, bytes]]:
    """Split unmasked server frames back into (opcode, fin, payload); `data` must hold whole frames."""
    view = memoryview(data)
    out: list[tuple[int, bool, bytes]] = []
    pos = 0
    end = len(view)
    while pos < end:
        first, second = view[pos], view[pos + 1]
        length = second & 0x7F
        pos += 2
        if length == 126:
            length = int.from_bytes(view[pos:pos + 2], "big")
            pos += 2
        elif length == 127:
            length = int.from_bytes(view[pos:pos + 8], "big")
            pos += 8
        if second & 0x80:
            raise ValueError("server frames are never masked")
        if pos + length > end:
            raise ValueError("truncated frame")
        out.append((first & 0x0F, bool(first & FIN), bytes(view[pos:pos + length])))
        pos += length
    return out
