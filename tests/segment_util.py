"""Helpers for tests that write real segment files."""

from __future__ import annotations

from pathlib import Path

from recorder.segment.reader import SegmentFile, open_segment
from recorder.segment.writer import SegmentWriter


def ime_payload(i: int, contract: str = "1001") -> bytes:
    return (
        b'{"channel":"IME Stream","contractId":"%s","timestamp":"2026-05-29T12:00:00.%06dZ","data":'
        b'{"BestLimit":{"1":{"buy_quantity":%d,"buy_price":%d,"sell_quantity":%d,"sell_price":%d}}}}'
        % (contract.encode(), i % 1_000_000, 100 + i % 37, 245000 - (i % 11) * 500, 90 + i % 23, 246000 + (i % 7) * 500)
    )


def write_records(directory: Path, records: list[tuple[int, int, int, bytes]], **kwargs: object) -> list[Path]:
    """Write records with a real SegmentWriter and return the sealed paths."""
    writer = SegmentWriter(directory, **kwargs)  # type: ignore[arg-type]
    for ts, conn, kind, payload in records:
        writer.append(ts, conn, kind, payload)
    return [s.path for s in writer.close()]


def read_all(path: Path) -> tuple[SegmentFile, list[tuple[int, int, int, bytes]]]:
    seg = open_segment(path)
    return seg, [(r.ts_ns, r.conn, r.kind, r.payload) for r in seg.iter_records()]


def unsealed_copy(sealed: Path, target: Path) -> Path:
    """The bytes an `.open` file held just before sealing: everything before the footer index."""
    seg = open_segment(sealed)
    end = seg.frames[-1].end_offset
    target.write_bytes(sealed.read_bytes()[:end])
    return target
