"""Sealing an `.open` segment left behind by a crash, keeping every complete, verified frame."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from recorder.segment.format import (
    DESCRIPTOR_FRAME_SIZE,
    SKIP_HEAD,
    XXH64_EMPTY_LOW32,
    FrameInfo,
    SeekEntry,
    SegmentFormatError,
    TruncatedHeaderError,
    encode_index,
    encode_seek_table,
)
from recorder.segment.layout import open_segments
from recorder.segment.naming import OPEN_SUFFIX, TAIL_SUFFIX, sealed_path
from recorder.segment.reader import open_segment, read_frame
from recorder.segment.writer import FILE_MODE, fsync_directory


@dataclass(frozen=True, slots=True)
class Recovery:
    source: Path
    sealed: Path | None  # None when nothing was recoverable (the header never reached the disk)
    frames: int
    records: int
    dropped_bytes: int
    tail: Path | None  # where unverifiable trailing bytes were kept, if any
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        if self.sealed is None:
            return f"{self.source}: nothing recoverable ({'; '.join(self.reasons)}); bytes kept in {self.tail}"
        text = f"{self.source} -> {self.sealed}: {self.frames} frames, {self.records} records kept"
        if self.dropped_bytes:
            text += (f"; {self.dropped_bytes} unverifiable trailing bytes moved to {self.tail}"
                     f" ({'; '.join(self.reasons)})")
        return text


def recover(path: Path | str) -> Recovery:
    """Verify every frame of an `.open` file, cut it after the last good one, seal and rename it.

    Frames after the first bad one are not trusted (their framing may be garbage), so the tail from
    there on is moved to `NAME.zst.tail` rather than deleted: nothing already recorded is thrown away.
    """
    path = Path(path)
    if not path.name.endswith(OPEN_SUFFIX):
        raise SegmentFormatError(f"{path} is not an .open segment; only crashed recordings need recovery")
    try:
        seg = open_segment(path)
    except TruncatedHeaderError as exc:
        # Died before its header reached the disk: no record can be in it. Keep the bytes, free the name.
        tail_path = path.with_name(path.name[: -len(OPEN_SUFFIX)] + TAIL_SUFFIX)
        os.rename(path, tail_path)
        return Recovery(path, None, 0, 0, tail_path.stat().st_size, tail_path, (str(exc),))
    dctx = zstandard.ZstdDecompressor()
    good: list[FrameInfo] = []
    reasons = [str(d.reason) for d in seg.damage]
    with open(path, "rb", buffering=0) as fh:
        for info in seg.frames:
            try:
                read_frame(fh, info, dctx)
            except SegmentFormatError as exc:
                reasons.append(f"frame {info.seq}: {exc}")
                break
            good.append(info)
        header_end = seg.frames[0].offset if seg.frames else _header_end(fh)
    cut = good[-1].end_offset if good else header_end
    dropped = seg.size - cut
    tail_path: Path | None = None
    final = sealed_path(path)
    if final.exists():
        raise SegmentFormatError(f"{final} already exists; move it away before recovering {path}")

    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if dropped:
            tail_path = path.with_name(path.name[: -len(OPEN_SUFFIX)] + TAIL_SUFFIX)
            os.lseek(fd, cut, os.SEEK_SET)
            tail = os.read(fd, dropped)
            tfd = os.open(tail_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                os.write(tfd, tail)
                os.fsync(tfd)
            finally:
                os.close(tfd)
            os.ftruncate(fd, cut)
        seal = {
            "reason": "recovered",
            "sealed_ns": time.time_ns(),
            "records": sum(f.records for f in good),
            "dropped_tail_bytes": dropped,
        }
        index = encode_index(good, seal)
        seek = [SeekEntry(header_end, 0, XXH64_EMPTY_LOW32)]
        for f in good:
            seek.append(SeekEntry(DESCRIPTOR_FRAME_SIZE, 0, XXH64_EMPTY_LOW32))
            seek.append(SeekEntry(f.compressed_size, f.raw_size, f.checksum))
        seek.append(SeekEntry(len(index), 0, XXH64_EMPTY_LOW32))
        os.lseek(fd, cut, os.SEEK_SET)
        data = memoryview(index + encode_seek_table(seek))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(path, final)
    fsync_directory(final.parent)
    return Recovery(path, final, len(good), sum(f.records for f in good), dropped, tail_path, tuple(reasons))


def _header_end(fh: BinaryIO) -> int:
    fh.seek(0)
    _, size = SKIP_HEAD.unpack(fh.read(SKIP_HEAD.size))
    return SKIP_HEAD.size + size


def recover_directory(directory: Path, shard: int | None = None) -> list[Recovery]:
    """Seal every `.open` file in a directory (optionally only one shard's): the recorder does this at start."""
    # Day directories (layout.py) and the flat layout alike.
    return [recover(p) for p in open_segments(directory, None, shard)]
