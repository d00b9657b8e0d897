"""Sealing an `.open` segment left behind by a crash, keeping every intact, verified frame.

The sealed file is written beside the `.open` one under a temporary name, then renamed: until that
rename nothing touches the `.open` file, so a failure (a full disk) leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, replace
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
from recorder.segment.naming import OPEN_SUFFIX, TAIL_SUFFIX, open_segments, sealed_path
from recorder.segment.reader import Damage, check_timestamps, decode_frame, open_segment
from recorder.segment.writer import FILE_MODE, fsync_directory

TEMP_SUFFIX = ".recovering"


class RecoveryError(Exception):
    """Recovery could not write its result (e.g. the disk is full); the `.open` file is unchanged."""


@dataclass(frozen=True, slots=True)
class Recovery:
    source: Path
    sealed: Path | None  # None when nothing was recoverable (the header never reached the disk)
    frames: int
    records: int
    dropped_bytes: int  # bytes of the .open file not in the sealed one: all of them are in `tail`
    tail: Path | None  # where the skipped (damaged, repeated or cut-off) bytes were kept, if any
    reasons: tuple[str, ...]  # every problem found, with its offset in the .open file
    damaged: bool = False  # something other than the cut-off last frame a crash leaves was skipped or reordered

    def __str__(self) -> str:
        if self.sealed is None:
            return f"{self.source}: nothing recoverable ({'; '.join(self.reasons)}); bytes kept in {self.tail}"
        text = f"{self.source} -> {self.sealed}: {self.frames} frames, {self.records} records kept"
        if self.dropped_bytes:
            text += f"; {self.dropped_bytes} unverifiable bytes skipped and kept in {self.tail}"
        if self.reasons:
            text += f" ({'; '.join(self.reasons)})"
        return text


def recover(path: Path | str) -> Recovery:
    """Verify every frame of an `.open` file and seal the intact ones, in sequence order, as `NAME.zst`.

    A damaged frame is skipped and the reader resynchronises on the next descriptor, so one bad byte
    costs one frame. Every byte range not in the sealed file (damage, a repeated frame, a cut-off tail)
    is copied to `NAME.zst.tail` and described in the result and in the seal's `skipped` list.
    """
    path = Path(path)
    if not path.name.endswith(OPEN_SUFFIX):
        raise SegmentFormatError(f"{path} is not an .open segment; only crashed recordings need recovery")
    try:
        seg = open_segment(path)
    except TruncatedHeaderError as exc:
        # Died before its header reached the disk: no record can be in it. Keep the bytes, free the name.
        tail_path = free_name(path.with_name(path.name[: -len(OPEN_SUFFIX)] + TAIL_SUFFIX))
        os.rename(path, tail_path)
        return Recovery(path, None, 0, 0, tail_path.stat().st_size, tail_path, (str(exc),))
    final = sealed_path(path)
    if final.exists():
        raise SegmentFormatError(f"{final} already exists; move it away before recovering {path}")
    temp = final.with_name(final.name + TEMP_SUFFIX)
    tail_path = free_name(path.with_name(path.name[: -len(OPEN_SUFFIX)] + TAIL_SUFFIX))
    tail_temp = tail_path.with_name(tail_path.name + TEMP_SUFFIX)
    damage = list(seg.damage)
    try:
        with open(path, "rb", buffering=0) as src:
            header_end = _header_end(src)
            kept, bad = _write_sealed(src, seg.frames, header_end, temp, path, damage, tail_path.name)
            damage.extend(bad)
            skipped = _gaps(kept, header_end, seg.size)
            if skipped:
                _copy_ranges(src, skipped, tail_temp)
    except OSError as exc:
        for p in (temp, tail_temp):
            with contextlib.suppress(OSError):
                os.unlink(p)
        reason = exc.strerror or str(exc)
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        raise RecoveryError(f"{path}: recovery failed ({reason}); the file is unchanged — {fix} and run "
                            "`ime-segments recover` again") from None
    if skipped:
        os.rename(tail_temp, tail_path)
    os.rename(temp, final)
    os.unlink(path)
    fsync_directory(final.parent)
    dropped = sum(end - start for start, end in skipped)
    reasons = tuple(d.describe() for d in sorted(damage, key=lambda d: d.offset))
    damaged = any(not d.reason.startswith("truncated") for d in damage)
    return Recovery(path, final, len(kept), sum(f.records for f in kept), dropped,
                    tail_path if skipped else None, reasons, damaged)


def _write_sealed(src: BinaryIO, frames: list[FrameInfo], header_end: int, temp: Path, source: Path,
                  damage: list[Damage], tail_name: str) -> tuple[list[FrameInfo], list[Damage]]:
    """Write header, intact frames and seal to `temp` (fsync'd); return (kept frames as in src, damage)."""
    dctx = zstandard.ZstdDecompressor()
    kept: list[FrameInfo] = []
    moved: list[FrameInfo] = []  # the kept frames at their offsets in the new file
    bad: list[Damage] = []
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        src.seek(0)
        out = _write_all(fd, src.read(header_end), 0)
        for info in frames:
            src.seek(info.offset)
            chunk = src.read(info.end_offset - info.offset)
            try:
                check_timestamps(decode_frame(chunk[DESCRIPTOR_FRAME_SIZE:], info, dctx), info)
            except SegmentFormatError as exc:
                bad.append(Damage(source, info.offset, info.seq, str(exc), info.records))
                continue
            kept.append(info)
            moved.append(replace(info, offset=out))
            out = _write_all(fd, chunk, out)
        skipped = _gaps(kept, header_end, os.fstat(src.fileno()).st_size)
        problems = damage + bad
        seal = {
            "reason": "recovered",
            "sealed_ns": time.time_ns(),
            "records": sum(f.records for f in kept),
            "dropped_tail_bytes": sum(end - start for start, end in skipped),
            "tail": tail_name if skipped else None,
            "skipped": [
                {"offset": start, "bytes": end - start,
                 "reason": "; ".join(d.reason for d in problems if start <= d.offset < end) or "not a frame"}
                for start, end in skipped
            ],
        }
        index = encode_index(moved, seal)
        seek = [SeekEntry(header_end, 0, XXH64_EMPTY_LOW32)]
        for f in moved:
            seek.append(SeekEntry(DESCRIPTOR_FRAME_SIZE, 0, XXH64_EMPTY_LOW32))
            seek.append(SeekEntry(f.compressed_size, f.raw_size, f.checksum))
        seek.append(SeekEntry(len(index), 0, XXH64_EMPTY_LOW32))
        _write_all(fd, index + encode_seek_table(seek), out)
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept, bad


def _gaps(kept: list[FrameInfo], header_end: int, size: int) -> list[tuple[int, int]]:
    """The byte ranges after the header that no kept frame covers, in file order."""
    gaps = []
    pos = header_end
    for f in sorted(kept, key=lambda f: f.offset):
        if f.offset > pos:
            gaps.append((pos, f.offset))
        pos = max(pos, f.end_offset)
    if pos < size:
        gaps.append((pos, size))
    return gaps


def _copy_ranges(src: BinaryIO, ranges: list[tuple[int, int]], target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        out = 0
        for start, end in ranges:
            src.seek(start)
            out = _write_all(fd, src.read(end - start), out)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return offset + len(data)


def free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2` … when an earlier recovery already left a file there."""
    candidate = path
    n = 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _header_end(fh: BinaryIO) -> int:
    fh.seek(0)
    _, size = SKIP_HEAD.unpack(fh.read(SKIP_HEAD.size))
    return SKIP_HEAD.size + size


def recover_directory(directory: Path, shard: int | None = None) -> list[Recovery]:
    """Seal every `.open` file in a directory (optionally only one shard's): the recorder does this at start."""
    # Day directories and the flat layout alike (naming.open_segments searches both).
    return [recover(p) for p in open_segments(directory, shard)]
