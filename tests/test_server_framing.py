"""Hand-built server frames, checked against an independent RFC 6455 parser (picows reads them in the
loopback tests)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.server.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    close_payload,
    fragments,
    frame,
    frame_header,
    text_header,
    truncate_utf8,
)


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """(fin, opcode, payload) for each unmasked frame in `data`; asserts the encoding is minimal."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames must not be masked"
        assert not b0 & 0x70, "no RSV bits"
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            assert length >= 126
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            assert length >= 65536
            pos += 8
        out.append((bool(b0 & 0x80), b0 & 0x0F, data[pos:pos + length]))
        pos += length
    assert pos == len(data)
    return out


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 8191, 8192, 65535, 65536, 70000])
def test_every_length_encoding(n):
    payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
    assert parse_frames(frame(payload)) == [(True, OP_TEXT, payload)]
    assert text_header(n) == frame_header(n)
    assert parse_frames(frame(payload, OP_BINARY)) == [(True, OP_BINARY, payload)]


def test_many_frames_concatenate():
    data = b"".join(frame(p) for p in (b"a", b"b" * 300, b"c" * 70000)) + frame(b"hi", OP_PING)
    assert [(op, len(p)) for _, op, p in parse_frames(data)] == [(1, 1), (1, 300), (1, 70000), (OP_PING, 2)]


@given(st.binary(min_size=1, max_size=3000), st.integers(2, 9))
def test_fragments_reassemble(payload, parts):
    frames = parse_frames(fragments(payload, parts))
    assert len(frames) == min(parts, len(payload))
    assert frames[0][1] == OP_TEXT
    assert all(op == OP_CONTINUATION for _, op, _ in frames[1:])
    assert [fin for fin, _, _ in frames] == [False] * (len(frames) - 1) + [True]
    assert b"".join(p for _, _, p in frames) == payload


def test_control_frames_are_limited():
    with pytest.raises(ValueError, match="125"):
        frame(b"x" * 126, OP_PING)
    with pytest.raises(ValueError, match="fragmented"):
        frame(b"x", OP_CLOSE, fin=False)
    with pytest.raises(ValueError, match="negative"):
        frame_header(-1)


def test_close_reason_is_cut_on_a_character_boundary():
    payload = close_payload(1008, "unknown contract: " + "سکه" * 60)
    assert len(payload) <= 125
    assert struct.unpack("!H", payload[:2]) == (1008,)
    payload[2:].decode("utf-8")  # still valid UTF-8
    assert truncate_utf8("abc", 10) == b"abc"
    assert truncate_utf8("aس", 2) == b"a"

