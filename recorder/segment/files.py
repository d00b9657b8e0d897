"""Segment files on disk: where they go, when they rotate, how they are made durable and sealed.

`SegmentFiles` is the file policy behind a writer thread: it names files (`ime-sNN-<start>Z.zst.open`, in a
day folder or the flat layout), writes each batch through a `SegmentEncoder` (the format, encoder.py), rotates on
the wall clock, at a size and at each day's end, fsyncs at most once a second, and seals: footer index and seek
table, fsync, atomic rename to `NAME.zst`, fsync of the directory. A write that fails leaves the `.open` file
ending on a frame boundary, and is sealed in place when the disk allows it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder import clock
from recorder.segment.encoder import RecordBatch, SegmentEncoder
from recorder.segment.layout import DayLayout
from recorder.segment.naming import OPEN_SUFFIX, open_path_for, sealed_path, segment_name

FILE_MODE = 0o640
ALL_TIME = (-(1 << 63), 1 << 63)  # the day bounds of the flat layout: a batch never has to be cut for a day


class SegmentWriteError(Exception):
    """Writing a segment failed (disk full, directory gone, permissions); the message says what to do."""


@dataclass(frozen=True, slots=True)
class SealedSegment:
    path: Path
    records: int
    frames: int
    raw_bytes: int
    compressed_bytes: int


def describe_os_error(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return (f"disk full writing {path}: free space (or point --out elsewhere) and start again; "
                "sealed segments are intact")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror}; check the directory's permissions"
    if exc.errno == errno.ENOENT:
        return f"cannot write {path}: the directory does not exist (was it removed?)"
    return f"cannot write {path}: {exc.strerror or exc}"


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FdOutput:
    """An encoder's output: whole writes to a file descriptor. A write that fails is cut back off the file, so
    that it ends on a frame boundary and every earlier frame stays readable.

    `budget` (tests only, IME_RECORDER_FAULT_ENOSPC_AFTER): the bytes that may still be written before every
    write fails with ENOSPC, as on a full disk; shared by the files of one writer."""

    def __init__(self, fd: int, budget: list[int] | None = None) -> None:
        self.fd = fd
        self.budget = budget
        self.written = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        start = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            if self.budget is not None:
                if len(data) > self.budget[0]:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.budget[0] -= len(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)
                os.lseek(self.fd, start, os.SEEK_SET)
            raise
        self.written += len(data)


class _OpenFile:
    """One `.open` file being written."""

    def __init__(self, path: Path, fd: int, start_ns: int, day: tuple[int, int], encoder: SegmentEncoder) -> None:
        self.path = path
        self.fd = fd
        self.start_ns = start_ns
        self.day = day  # [start, end) of the day whose folder holds the file; its records are all of that day
        self.encoder = encoder

    def sealed(self, final: Path) -> SealedSegment:
        enc = self.encoder
        return SealedSegment(final, enc.records, len(enc.frames), enc.raw_bytes, enc.offset)


class SegmentFiles:
    """The files of one writer (see the module docstring). Called from one thread, the writer's."""

    def __init__(self, directory: Path, *, shard: int, prefix: str, level: int, meta: dict[str, Any],
                 rotate_bytes: int, rotate_seconds: float, fsync_interval_s: float = 1.0,
                 days: DayLayout | None = None, name_by_data: bool = False, budget: list[int] | None = None,
                 on_sealed: Callable[[SealedSegment], None] | None = None) -> None:
        self.directory = directory
        self.shard = shard
        self.prefix = prefix
        self.level = level
        self.meta = meta  # header keys of the files opened from now on
        self.rotate_bytes = rotate_bytes
        self.rotate_ns = int(rotate_seconds * 1e9) if rotate_seconds > 0 else 0
        self.fsync_interval_s = fsync_interval_s
        # A sealed file is named by its earliest record rather than by when it was opened: files written
        # after the fact (`ime-segments merge`) then sort and read by the time of the data they hold.
        self.name_by_data = name_by_data
        self.days = days
        self.budget = budget
        self.on_sealed = on_sealed
        self.current: _OpenFile | None = None
        self.sealed: list[SealedSegment] = []
        self.file_seq = 0
        self.bytes_written = 0  # of sealed files, and of the current one so far
        self._last_sync = time.monotonic()
        self._dirty = False

    # -- what the writer thread asks ------------------------------------------------------------------------

    def write(self, batch: RecordBatch) -> None:
        cur = self.current
        assert cur is not None
        if not cur.day[0] <= batch.first_ts < cur.day[1]:
            # A batch of another day (the caller cut it at the day's end): a file in that day's folder.
            cur = self._replace(cur, batch.first_ts)
        before = cur.encoder.offset
        cur.encoder.add(batch)
        self.bytes_written += cur.encoder.offset - before
        self._dirty = True
        if cur.encoder.offset >= self.rotate_bytes:
            self.rotate("rotated", clock.time_ns())

    def rotate(self, reason: str, now_ns: int) -> None:
        """Seal the current file, if a frame went into it, and start the next."""
        cur = self.current
        if cur is not None and cur.encoder.frames:
            self._seal(cur, reason)
            self.current = self.open(now_ns)

    def tick(self, now_ns: int) -> None:
        """After every operation: rotation on the wall clock, then at most one fdatasync a second."""
        cur = self.current
        if cur is None:
            return
        # Aligned to the wall clock (hourly files start on the hour), which is what operators expect.
        if self.rotate_ns and cur.encoder.frames and now_ns // self.rotate_ns != cur.start_ns // self.rotate_ns:
            self.rotate("rotated", now_ns)
        elif self._dirty and time.monotonic() - self._last_sync >= self.fsync_interval_s:
            # Bounds what a power loss can take to about a second; a process crash loses nothing that reached
            # the write.
            os.fdatasync(cur.fd)
            self._last_sync = time.monotonic()
            self._dirty = False

    def close(self, reason: str) -> None:
        if self.current is not None:
            self._seal(self.current, reason)
            self.current = None

    def abandon(self) -> None:
        """Close the current file as it is (its output is being thrown away)."""
        if self.current is not None:
            with contextlib.suppress(OSError):
                os.close(self.current.fd)
            self.current = None

    def failed(self) -> Path:
        """After a write failed: close the current file, sealed in place if the disk allows it (else `ime-segments
        recover` seals it later); returns where the failure happened."""
        cur, self.current = self.current, None
        if cur is None:
            return self.directory
        with contextlib.suppress(OSError):
            os.close(cur.fd)
        with contextlib.suppress(OSError):
            self._reseal(cur)
        return cur.path

    # -- opening and sealing -------------------------------------------------------------------------------

    def open(self, start_ns: int) -> _OpenFile:
        self.file_seq += 1
        directory, day = self.directory, ALL_TIME
        if self.days is not None:
            day = self.days.day_bounds(start_ns)
            directory = self.directory / self.days.directory(start_ns)
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                fsync_directory(self.directory)  # the new day directory must survive a power cut too
        path, fd = self._create(directory, start_ns)
        os.fchmod(fd, FILE_MODE)  # the umask must not widen or narrow what operators rely on
        encoder = SegmentEncoder(FdOutput(fd, self.budget), self.level)
        cur = _OpenFile(path, fd, start_ns, day, encoder)
        encoder.start({**self.meta, "start_ns": start_ns, "file_seq": self.file_seq})
        self.bytes_written += encoder.offset
        return cur

    def _create(self, directory: Path, stamp: int) -> tuple[Path, int]:
        while True:
            name = segment_name(self.prefix, self.shard, stamp)
            path = directory / (name[: -len(".zst")] + OPEN_SUFFIX)
            if not (directory / name).exists():
                try:
                    return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                except FileExistsError:
                    pass
            stamp += 1_000_000

    def _replace(self, cur: _OpenFile, start_ns: int) -> _OpenFile:
        """Seal the current file (or drop it, if no frame made it into it yet) and open one starting at start_ns."""
        if cur.encoder.frames:
            self._seal(cur, "rotated")
        else:
            os.close(cur.fd)
            os.unlink(cur.path)
            self.bytes_written -= cur.encoder.offset
            self.file_seq -= 1
        self.current = self.open(start_ns)
        return self.current

    def _seal(self, cur: _OpenFile, reason: str) -> None:
        before = cur.encoder.offset
        cur.encoder.finish({"reason": reason, "sealed_ns": clock.time_ns()})
        self.bytes_written += cur.encoder.offset - before
        os.fsync(cur.fd)
        os.close(cur.fd)
        final = self._sealed_name(cur)
        os.rename(cur.path, final)
        fsync_directory(final.parent)
        self._sealed(cur.sealed(final))

    def _sealed(self, sealed: SealedSegment) -> None:
        self.sealed.append(sealed)
        if self.on_sealed is not None:
            self.on_sealed(sealed)

    def _sealed_name(self, cur: _OpenFile) -> Path:
        final = sealed_path(cur.path)
        if not self.name_by_data or not cur.encoder.frames:
            return final
        stamp = min(f.min_ts for f in cur.encoder.frames)
        while True:
            candidate = final.with_name(segment_name(self.prefix, self.shard, stamp))
            if candidate == final or not (candidate.exists() or open_path_for(candidate).exists()):
                return candidate
            stamp += 1_000_000

    def _reseal(self, cur: _OpenFile) -> None:
        fd = os.open(cur.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, cur.encoder.offset)
            os.lseek(fd, cur.encoder.offset, os.SEEK_SET)
            cur.encoder.output = FdOutput(fd)  # the disk may have room for the seal now: no test budget
            cur.encoder.finish({"reason": "write-error", "sealed_ns": clock.time_ns()})
            os.fsync(fd)
        finally:
            os.close(fd)
        final = sealed_path(cur.path)
        os.rename(cur.path, final)
        self._sealed(cur.sealed(final))
