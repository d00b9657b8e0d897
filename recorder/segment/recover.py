"""Sealing what a crash or a cut copy left behind, keeping every intact, verified frame.

`recover` takes any segment file and never gives up on the good data in it:

- `NAME.zst.open` (a crash left it): its intact frames are sealed as `NAME.zst`.
- `NAME.zst` that does not check out (a copy that stopped part-way, damaged bytes): re-sealed in place the same way.
- `NAME.zst` that checks out: left alone, and said so.
- a file with no record to keep (zero length, cut inside its header, its header only, no intact frame): no sealed
  file is written; it is renamed `NAME.zst.tail`, so that its name is free and its bytes are kept.

Every byte of the original that is not in the sealed file is kept in `NAME.zst.tail` (`.tail.1`, ... when that
name is taken). The sealed file is written under a temporary name, then renamed: until that rename nothing touches
the original, so a failure (a full disk) leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from recorder import clock
from recorder.segment.encoder import SegmentEncoder
from recorder.segment.files import FILE_MODE, FdOutput, fsync_directory
from recorder.segment.format import (
    DESCRIPTOR_FRAME_SIZE,
    FrameInfo,
    SegmentFormatError,
    TruncatedHeaderError,
)
from recorder.segment.naming import OPEN_SUFFIX, SEALED_SUFFIX, TAIL_SUFFIX, open_segments, sealed_path
from recorder.segment.reader import (
    Damage,
    check_timestamps,
    decode_frame,
    header_end,
    open_segment,
    order_frames,
    read_seal,
    walk_frames,
)

TEMP_SUFFIX = ".recovering"

SEALED = "sealed"  # an .open file sealed
RESEALED = "resealed"  # a sealed file that did not check out, sealed again
MOVED = "moved"  # nothing to keep: renamed to .tail
INTACT = "intact"  # a sealed file that checks out: nothing done


class RecoveryError(Exception):
    """Recovery could not write its result (e.g. the disk is full); the file is unchanged."""


@dataclass(frozen=True, slots=True)
class Recovery:
    source: Path
    sealed: Path | None  # None when nothing was recoverable (no intact frame, or the header never reached the disk)
    frames: int
    records: int
    dropped_bytes: int  # bytes of the source not in the sealed one: all of them are in `tail`
    tail: Path | None  # where the skipped (damaged, repeated or cut-off) bytes were kept, if any
    reasons: tuple[str, ...]  # every problem found, with its offset in the source
    damaged: bool = False  # something other than what a crash leaves (a cut-off last frame) was skipped or reordered
    action: str = SEALED

    def __str__(self) -> str:
        if self.action == INTACT:
            return f"{self.source}: sealed and intact ({self.frames} frames, {self.records} records, every checksum " \
                   "right); nothing to do"
        if self.action == MOVED:
            return f"{self.source}: no record to keep ({'; '.join(self.reasons)}); its {self.dropped_bytes} bytes " \
                   f"moved aside to {self.tail}"
        if self.action == RESEALED:
            text = f"{self.source}: re-sealed with {self.frames} frames, {self.records} records kept"
        else:
            text = f"{self.source} -> {self.sealed}: {self.frames} frames, {self.records} records kept"
        if self.dropped_bytes:
            text += f"; {self.dropped_bytes} unverifiable bytes skipped and kept in {self.tail}"
        if self.reasons:
            text += f" ({'; '.join(self.reasons)})"
        return text


@dataclass(frozen=True, slots=True)
class RecoveryFailure:
    """A file recovery could not handle; it was left exactly as it was."""

    source: Path
    message: str
    damaged: bool = True

    def __str__(self) -> str:
        return f"{self.source}: not recovered: {self.message}"


def recover(path: Path | str, progress: Callable[[int], None] | None = None) -> Recovery:
    """Seal the intact frames of an `.open` file as `NAME.zst`, or re-seal a `NAME.zst` that does not check out.

    Frames are found by the readers' walk (`reader.walk_frames`), which resynchronises on the next valid
    descriptor after any damage, and each is verified (checksums, decompression, record layout) before it is
    kept, in sequence order. Every byte range not in the sealed file (damage, a repeated frame, a cut-off tail,
    an old seal) is copied to `NAME.zst.tail` and described in the result and in the seal's `skipped` list.
    Raises SegmentFormatError when the file is not a segment recovery can read (its header is damaged or of a
    newer format) and RecoveryError when writing fails; the file is unchanged then. `progress` is told the bytes
    of each frame checked.
    """
    path = Path(path)
    if path.name.endswith(OPEN_SUFFIX):
        final = sealed_path(path)
    elif path.name.endswith(SEALED_SUFFIX):
        final = path
    else:
        raise SegmentFormatError("not a segment file (*.zst or *.zst.open)")
    resealing = final == path
    try:
        seg = open_segment(path)
    except TruncatedHeaderError as exc:
        # Died before its header reached the disk (or a copy stopped there): no record can be in it.
        return _move_aside(path, os.path.getsize(path), (str(exc),), damaged=resealing)
    notes: tuple[str, ...] = ()
    if resealing:
        # Checked by structure and CRCs, not decompressed (see SegmentFile.verify): a recording's directory of
        # sealed files is checked at disk speed.
        problems = seg.verify(decompress=False, progress=progress) if seg.sealed else []
        if seg.sealed and not problems:
            return Recovery(path, path, len(seg.frames), seg.records, 0, None, (), action=INTACT)
        # What is wrong with the seal itself; the frames' damage is found again by the walk below.
        notes = tuple(d.describe() for d in problems if d.frame is None) if seg.sealed else (_seal_problem(path),)
    elif final.exists():
        raise SegmentFormatError(f"{final} already exists; move it away before recovering {path}")
    try:
        return _reseal(path, final, resealing, notes, progress)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        raise RecoveryError(f"recovery failed ({reason}); the file is unchanged — {fix} and run "
                            "`ime-segments recover` again") from None


def _seal_problem(path: Path) -> str:
    with open(path, "rb") as fh:
        try:
            read_seal(fh, os.fstat(fh.fileno()).st_size)
        except SegmentFormatError as exc:
            return f"not sealed properly: {exc}"
    return "not sealed properly"


def _reseal(path: Path, final: Path, resealing: bool, notes: tuple[str, ...],
            progress: Callable[[int], None] | None = None) -> Recovery:
    temp = final.with_name(final.name + TEMP_SUFFIX)
    tail_path = free_name(tail_name(path))
    tail_temp = tail_path.with_name(tail_path.name + TEMP_SUFFIX)
    try:
        size, kept, skipped, damage = _salvage(path, temp, tail_temp, tail_path.name, progress)
    except BaseException:
        for p in (temp, tail_temp):
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise
    reasons = notes + tuple(d.describe() for d in sorted(damage, key=lambda d: d.offset))
    # A crash leaves at most a cut-off last frame; a sealed file is never cut by one.
    damaged = resealing or any(not d.reason.startswith("truncated") for d in damage)
    if not kept:
        os.unlink(temp)
        return _move_aside(path, size, reasons or ("its header only",), damaged)
    if skipped:
        os.rename(tail_temp, tail_path)
    os.rename(temp, final)
    if not resealing:
        os.unlink(path)
    fsync_directory(final.parent)
    dropped = sum(end - start for start, end in skipped)
    return Recovery(path, final, len(kept), sum(f.records for f in kept), dropped, tail_path if skipped else None,
                    reasons, damaged, RESEALED if resealing else SEALED)


def _salvage(path: Path, temp: Path, tail_temp: Path, tail_file: str, progress: Callable[[int], None] | None = None,
             ) -> tuple[int, list[FrameInfo], list[tuple[int, int]], list[Damage]]:
    """The intact frames of `path` sealed into `temp`, and the bytes not in them into `tail_temp` (when a frame was
    kept); returns the file's size, the kept frames, the skipped byte ranges and all damage found."""
    with open(path, "rb", buffering=0) as src:
        size = os.fstat(src.fileno()).st_size
        end_of_header = header_end(src)
        # The same walk the readers use, over what is really in the file (a sealed file's index is not trusted:
        # it is what did not check out).
        walked, damage, _ = walk_frames(src, path, size)
        frames, order_damage = order_frames(walked, path)
        damage += order_damage
        kept, skipped = _write_sealed(src, frames, end_of_header, temp, path, damage, tail_file, progress)
        if kept and skipped:
            _copy_ranges(src, skipped, tail_temp)
    return size, kept, skipped, damage


def _move_aside(path: Path, size: int, reasons: tuple[str, ...], damaged: bool) -> Recovery:
    """A file with no record to keep: renamed to `.tail`, which frees its name and keeps its bytes."""
    tail_path = free_name(tail_name(path))
    os.rename(path, tail_path)
    fsync_directory(path.parent)
    return Recovery(path, None, 0, 0, size, tail_path, reasons, damaged, MOVED)


def tail_name(path: Path) -> Path:
    """`NAME.zst.tail` for `NAME.zst.open` and `NAME.zst` alike."""
    stem = path.name[: -len(OPEN_SUFFIX)] if path.name.endswith(OPEN_SUFFIX) else path.name[: -len(SEALED_SUFFIX)]
    return path.with_name(stem + TAIL_SUFFIX)


def _write_sealed(src: BinaryIO, frames: list[FrameInfo], header_end: int, temp: Path, source: Path,
                  damage: list[Damage], tail_file: str,
                  progress: Callable[[int], None] | None = None) -> tuple[list[FrameInfo], list[tuple[int, int]]]:
    """Write header, intact frames and seal to `temp` (fsync'd); a frame that fails its checks joins `damage`.
    Returns the kept frames (as in src) and the byte ranges of src not in them."""
    dctx = zstandard.ZstdDecompressor()
    kept: list[FrameInfo] = []
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        encoder = SegmentEncoder(FdOutput(fd))
        src.seek(0)
        encoder.start_with(src.read(header_end))
        for info in frames:
            src.seek(info.offset)
            chunk = src.read(info.end_offset - info.offset)
            if progress is not None:
                progress(len(chunk))
            try:
                check_timestamps(decode_frame(chunk[DESCRIPTOR_FRAME_SIZE:], info, dctx), info)
            except SegmentFormatError as exc:
                damage.append(Damage(source, info.offset, info.seq, str(exc), info.records))
                continue
            kept.append(info)
            encoder.add_frame(info, chunk)
        skipped = _gaps(kept, header_end, os.fstat(src.fileno()).st_size)
        encoder.finish({
            "reason": "recovered",
            "sealed_ns": clock.time_ns(),
            "dropped_tail_bytes": sum(end - start for start, end in skipped),
            "tail": tail_file if skipped else None,
            "skipped": [
                {"offset": start, "bytes": end - start,
                 "reason": "; ".join(d.reason for d in damage if start <= d.offset < end) or "not a frame"}
                for start, end in skipped
            ],
        })
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept, skipped


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
        out = FdOutput(fd)
        for start, end in ranges:
            src.seek(start)
            out.write(src.read(end - start))
        os.fsync(fd)
    finally:
        os.close(fd)


def free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2` … when an earlier recovery already left a file there."""
    candidate = path
    n = 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def recover_each(paths: Iterable[Path],
                 progress: Callable[[int], None] | None = None) -> list[Recovery | RecoveryFailure]:
    """`recover` every file, one result each: one file that cannot be recovered never stops the others."""
    results: list[Recovery | RecoveryFailure] = []
    for p in paths:
        try:
            results.append(recover(p, progress))
        except RecoveryError as exc:
            results.append(RecoveryFailure(p, str(exc)))  # it says the file is unchanged
        except SegmentFormatError as exc:
            results.append(RecoveryFailure(p, f"{exc}; left as it is"))
        except OSError as exc:
            results.append(RecoveryFailure(p, f"{exc.strerror or exc}; left as it is"))
    return results


def recover_directory(directory: Path, shard: int | None = None) -> list[Recovery | RecoveryFailure]:
    """Seal every `.open` file in a directory (optionally only one shard's): the recorder does this at start."""
    # Day directories and the flat layout alike (naming.open_segments searches both).
    return recover_each(open_segments(directory, shard))
