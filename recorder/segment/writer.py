"""SegmentWriter: cheap appends on the caller's thread; compression, file I/O and rotation on its own thread.

The recorder's event loop must never wait for zstd or the disk, so `append` only packs a record header
into the current batch. A full batch (by size, or by age) is handed over a queue to the writer thread,
which compresses it, appends descriptor + frame to `NAME.zst.open` with one write, and seals files
(footer index, seek table, fsync, atomic rename) on rotation and close.

Memory is bounded: when more than `max_backlog_bytes` of raw records wait for the writer thread,
`on_backlog(True)` asks the owner to stop reading its sockets (TCP then pushes back on the sender);
`on_backlog(False)` says it may resume. Nothing is dropped to keep memory bounded.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, islice, repeat
from operator import add, ge
from pathlib import Path
from typing import Any

from recorder import __version__, clock
from recorder.segment.batch import RecordBatch, encode_frame, new_compressor
from recorder.segment.format import (
    DESCRIPTOR_FRAME_SIZE,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    RECORD_HEADER,
    XXH64_EMPTY_LOW32,
    FrameInfo,
    RecordKind,
    SeekEntry,
    encode_header,
    encode_index,
    encode_receipt,
    encode_seek_table,
)
from recorder.segment.layout import DayLayout
from recorder.segment.naming import OPEN_SUFFIX, open_path_for, sealed_path, segment_name

log = logging.getLogger("recorder.segment.writer")
_RECEIPT = int(RecordKind.RECEIPT)

DEFAULT_FRAME_BYTES = 1 << 20
DEFAULT_FLUSH_MS = 200
DEFAULT_ROTATE_BYTES = 1 << 30
DEFAULT_ROTATE_SECONDS = 3600
DEFAULT_LEVEL = 3
# Eight default frames. At full speed from a fast feeder the receive thread outruns compression and the backlog
# sits at this limit; at 256 MiB a worker peaked at 351 MiB RSS (issue 15), far above DESIGN's 100 MB.
DEFAULT_MAX_BACKLOG_BYTES = 8 << 20
FILE_MODE = 0o640
_ALL_TIME = (-(1 << 63), 1 << 63)  # the day bounds of the flat layout: a batch never has to be cut for a day


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


class _OpenSegment:
    """One `.open` file being written by the writer thread."""

    def __init__(self, path: Path, fd: int, start_ns: int, header: bytes, day: tuple[int, int]) -> None:
        self.path = path
        self.fd = fd
        self.start_ns = start_ns
        self.day = day  # [start, end) of the day whose folder holds the file; its records are all of that day
        self.offset = 0
        self.frames: list[FrameInfo] = []
        self.seek: list[SeekEntry] = [SeekEntry(len(header), 0, XXH64_EMPTY_LOW32)]
        self.records = 0
        self.receipts = 0
        self.raw_bytes = 0

    def seal_meta(self, reason: str) -> dict[str, Any]:
        return {"reason": reason, "sealed_ns": clock.time_ns(), "records": self.records, "receipts": self.receipts}


class SegmentWriter:
    def __init__(
        self,
        directory: Path | str,
        *,
        shard: int = 0,
        meta: dict[str, Any] | None = None,
        prefix: str = "ime",
        level: int = DEFAULT_LEVEL,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        flush_ms: float = DEFAULT_FLUSH_MS,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        rotate_seconds: float = DEFAULT_ROTATE_SECONDS,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
        fsync_interval_s: float = 1.0,
        on_backlog: Callable[[bool], None] | None = None,
        on_error: Callable[[SegmentWriteError], None] | None = None,
        on_sealed: Callable[[SealedSegment], None] | None = None,
        fault_enospc_after_bytes: int | None = None,
        days: DayLayout | None = None,
        name_by_data: bool = False,
    ) -> None:
        self.directory = Path(directory)
        # A sealed file is named by its earliest record rather than by when it was opened: files written
        # after the fact (`ime-segments merge`) then sort and read by the time of the data they hold.
        self._name_by_data = name_by_data
        # Day folders (layout.DayLayout), or None for the flat layout. With them, no frame and no file holds
        # records of two days: the caller's thread cuts the batch when a record of a new day comes
        # (`_day_end`), and the writer thread starts a new file for a batch of another day than its file's.
        self._days = days
        self._day_end = _ALL_TIME[0] if days is not None else _ALL_TIME[1]  # the first record sets it
        self.shard = shard
        self.prefix = prefix
        self.level = level
        self.frame_bytes = frame_bytes
        self.flush_ns = int(flush_ms * 1_000_000)
        self.rotate_bytes = rotate_bytes
        self.rotate_ns = int(rotate_seconds * 1e9) if rotate_seconds > 0 else 0
        self.max_backlog_bytes = max_backlog_bytes
        self.fsync_interval_s = fsync_interval_s
        self._on_backlog = on_backlog
        self._on_error = on_error
        self._on_sealed = on_sealed
        self._fault_after = fault_enospc_after_bytes
        self._meta = {
            "format": f"{FORMAT_MAJOR}.{FORMAT_MINOR}",
            "recorder_version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "shard": shard,
            "compression_level": level,
            "frame_bytes": frame_bytes,
            "flush_ms": flush_ms,
            **(meta or {}),
        }

        self._batch_serial = 1
        self._batch = RecordBatch(self._batch_serial)
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._backlog = 0
        self._paused = False
        self._lock = threading.Lock()
        self.error: SegmentWriteError | None = None
        self.records_lost = 0
        self._aborted = False

        # Figures for status lines; written by the writer thread, read anywhere.
        self.records_written = 0
        self.frames_written = 0
        self.bytes_written = 0
        self.raw_bytes_written = 0
        self.files_sealed = 0
        self.sealed: list[SealedSegment] = []
        self._current: _OpenSegment | None = None
        self._file_seq = 0
        self._total_written = 0

        # Open the first file here, on the caller's thread, so an unwritable directory fails at start.
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._current = self._open_segment(clock.time_ns())
        except OSError as exc:
            raise SegmentWriteError(describe_os_error(exc, self.directory)) from None
        self._thread = threading.Thread(target=self._run, name=f"segment-writer-s{shard:02d}", daemon=True)
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The writer thread's kernel thread id (for scheduling it: record/timeslice.py)."""
        return self._thread.native_id

    # --- caller's thread ------------------------------------------------------------------------

    def append(self, ts_ns: int, conn: int, kind: int, payload: bytes) -> None:
        if ts_ns >= self._day_end:
            self._next_day(ts_ns)
        batch = self._batch
        batch.append(ts_ns, conn, kind, payload)
        if batch.raw_size >= self.frame_bytes or ts_ns - batch.first_ts >= self.flush_ns:
            self.cut()

    def extend(self, rows: Sequence[tuple[int, int, int, bytes]]) -> None:
        """`append` for each (ts_ns, conn, kind, payload) in turn, cut into frames at exactly the same records,
        a frame's worth at a time (the merge's writer; see RecordBatch.extend)."""
        if not rows:
            return
        if self._days is not None:
            for row in rows:  # cut at each day's end (the merge, whose speed this is for, writes no day folders)
                self.append(*row)
            return
        stamps, conns, kinds, payloads = zip(*rows, strict=True)
        # Where append would cut: the first record that brings the batch to frame_bytes, or that is flush_ms
        # younger than the batch's first record.
        ends = list(accumulate(map(add, map(len, payloads), repeat(RECORD_HEADER.size))))
        start, n = 0, len(stamps)
        while start < n:
            batch = self._batch
            base = ends[start - 1] if start else 0
            full = bisect_left(ends, self.frame_bytes - batch.raw_size + base, start)
            first = batch.first_ts if batch.records else stamps[start]
            old = next(compress(range(start, n), map(ge, islice(stamps, start, None),
                                                     repeat(first + self.flush_ns))), n)
            end = min(full, old, n - 1) + 1
            batch.extend(stamps[start:end], conns[start:end], kinds[start:end], payloads[start:end])
            if end - 1 in (full, old):
                self.cut()
            start = end

    def position(self) -> tuple[int, int]:
        """Where the next appended record will be: (batch serial, index in the batch), for `append_receipt`."""
        return self._batch.serial, self._batch.records

    def append_receipt(self, ts_ns: int, conn: int, orig_ts_ns: int, orig_conn: int,
                       orig_position: tuple[int, int]) -> None:
        """A later copy of the record appended at `orig_position` (see `position`) by `orig_conn` at `orig_ts_ns`.

        It joins the batch's receipt columns: by the original's index while that is in the batch, with its own
        time and the original's connection otherwise. Only in a batch with no record yet is it a 12-byte receipt
        record of its own.
        """
        if ts_ns >= self._day_end:
            self._next_day(ts_ns)
        batch = self._batch
        if not batch.records:
            self.append(ts_ns, conn, _RECEIPT, encode_receipt(orig_conn, ts_ns - orig_ts_ns))
            return
        if orig_position[0] == batch.serial:
            batch.append_near_receipt(ts_ns, conn, orig_position[1], ts_ns - orig_ts_ns)
        else:
            batch.append_far_receipt(ts_ns, conn, orig_conn, ts_ns - orig_ts_ns)
        if batch.raw_size >= self.frame_bytes or ts_ns - batch.first_ts >= self.flush_ns:
            self.cut()

    def _next_day(self, ts_ns: int) -> None:
        """A record of a later day: what the batch holds is of the day before, and goes in a frame of its own."""
        self.cut()
        self._day_end = self._days.day_bounds(ts_ns)[1] if self._days is not None else _ALL_TIME[1]

    def cut(self) -> None:
        """Hand the current batch to the writer thread (no-op when empty)."""
        batch = self._batch
        if batch.records == 0:
            return
        self._batch_serial += 1
        self._batch = RecordBatch(self._batch_serial)
        if self.error is not None:
            self.records_lost += batch.records
            return
        with self._lock:
            self._backlog += batch.raw_size
            pause = not self._paused and self._backlog > self.max_backlog_bytes
            if pause:
                self._paused = True
        self._queue.put(("frame", batch))
        if pause and self._on_backlog is not None:
            self._on_backlog(True)

    def tick(self, now_ns: int | None = None) -> None:
        """Call every few tens of ms: cuts a batch that has grown old while the feed was quiet."""
        batch = self._batch
        if batch.records and (now_ns if now_ns is not None else clock.time_ns()) - batch.first_ts >= self.flush_ns:
            self.cut()

    @property
    def backlog_bytes(self) -> int:
        return self._backlog + self._batch.raw_size

    @property
    def current_path(self) -> Path | None:
        cur = self._current
        return cur.path if cur is not None else None

    @property
    def bytes_on_disk(self) -> int:
        return self.bytes_written

    def flush(self, timeout: float | None = None) -> bool:
        """Cut the batch and wait until the writer thread has written everything queued so far."""
        self.cut()
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def update_meta(self, **fields: Any) -> None:
        """Header keys for the files opened from now on (the current one keeps its header)."""
        self._meta = {**self._meta, **fields}

    def rotate(self) -> None:
        self.cut()
        self._queue.put(("rotate", None))

    def close(self, reason: str = "closed", timeout: float | None = 30.0) -> list[SealedSegment]:
        """Write every buffered record, seal the current file and stop the thread. Idempotent."""
        if self._thread.is_alive():
            self.cut()
            self._queue.put(("close", reason))
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return list(self.sealed)

    def abort(self, timeout: float = 30.0) -> None:
        """Stop the writer thread without writing what is still queued or sealing anything; the current `.open`
        file is closed as it is. For output that is being thrown away (an interrupted merge's staging directory):
        once this returns, nothing writes to or renames in the directory any more."""
        self._aborted = True
        self._queue.put(("abort", None))
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # --- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        cctx = new_compressor(self.level)
        last_sync = time.monotonic()
        dirty = False
        while True:
            try:
                op, arg = self._queue.get(timeout=0.25)
            except queue.Empty:
                op, arg = "idle", None
            if self._aborted:
                if self._current is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._current.fd)
                    self._current = None
                return
            try:
                if op == "frame":
                    self._write_batch(arg, cctx)
                    dirty = True
                elif op == "sync":
                    arg.set()
                elif op == "rotate":
                    if self._current is not None and self._current.frames:
                        self._seal("rotated")
                        self._current = self._open_segment(clock.time_ns())
                elif op == "close":
                    if self._current is not None:
                        self._seal(arg)
                        self._current = None
                    return
                now_ns = clock.time_ns()
                if self._due_for_time_rotation(now_ns):
                    self._seal("rotated")
                    self._current = self._open_segment(now_ns)
                elif dirty and time.monotonic() - last_sync >= self.fsync_interval_s and self._current:
                    # Bounds what a power loss can take to about a second; a process crash loses
                    # nothing that reached this write.
                    os.fdatasync(self._current.fd)
                    last_sync = time.monotonic()
                    dirty = False
            except OSError as exc:
                self._fail(exc)
                self._drain_after_failure()
                return
            except Exception as exc:  # a bug must not leave the recorder waiting on a dead thread
                log.exception("segment writer thread failed")
                self._fail(OSError(errno.EIO, f"internal error: {exc}"))
                self._drain_after_failure()
                return

    def _due_for_time_rotation(self, now_ns: int) -> bool:
        cur = self._current
        if cur is None or not self.rotate_ns or not cur.frames:
            return False
        # Aligned to the wall clock (hourly files start on the hour), which is what operators expect.
        return now_ns // self.rotate_ns != cur.start_ns // self.rotate_ns

    def _write_batch(self, batch: RecordBatch, cctx: Any) -> None:
        cur = self._current
        assert cur is not None
        if not cur.day[0] <= batch.first_ts < cur.day[1]:
            # A batch of another day (the caller cut it at the day's end): a file in that day's folder.
            cur = self._current = self._replace(cur, batch.first_ts)
        info, data = encode_frame(batch, len(cur.frames), cur.offset, cctx)
        self._write_all(cur, data)
        cur.frames.append(info)
        cur.seek.append(SeekEntry(DESCRIPTOR_FRAME_SIZE, 0, XXH64_EMPTY_LOW32))
        cur.seek.append(SeekEntry(info.compressed_size, info.raw_size, info.checksum))
        cur.records += info.records
        cur.receipts += batch.receipts
        cur.raw_bytes += info.raw_size
        self.records_written += info.records
        self.frames_written += 1
        self.raw_bytes_written += info.raw_size
        with self._lock:
            self._backlog -= batch.raw_size
            resume = self._paused and self._backlog <= self.max_backlog_bytes // 2
            if resume:
                self._paused = False
        if resume and self._on_backlog is not None:
            self._on_backlog(False)
        if cur.offset >= self.rotate_bytes:
            self._seal("rotated")
            self._current = self._open_segment(clock.time_ns())

    def _write_all(self, cur: _OpenSegment, data: bytes) -> None:
        view = memoryview(data)
        start = cur.offset
        try:
            if self._fault_after is not None and self._total_written + len(data) > self._fault_after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            while view:
                n = os.write(cur.fd, view)
                view = view[n:]
        except OSError:
            # Leave the .open file ending on a frame boundary so every earlier frame stays readable.
            with contextlib.suppress(OSError):
                os.ftruncate(cur.fd, start)
            raise
        cur.offset += len(data)
        self.bytes_written += len(data)
        self._total_written += len(data)

    def _replace(self, cur: _OpenSegment, start_ns: int) -> _OpenSegment:
        """Seal the current file (or drop it, if no frame made it into it yet) and open one starting at start_ns."""
        if cur.frames:
            self._seal("rotated")
        else:
            os.close(cur.fd)
            os.unlink(cur.path)
            self._file_seq -= 1
        return self._open_segment(start_ns)

    def _open_segment(self, start_ns: int) -> _OpenSegment:
        self._file_seq += 1
        meta = {**self._meta, "start_ns": start_ns, "file_seq": self._file_seq}
        header = encode_header(meta)
        stamp = start_ns
        directory = self.directory
        day = _ALL_TIME
        if self._days is not None:
            day = self._days.day_bounds(start_ns)
            directory = self.directory / self._days.directory(start_ns)
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                fsync_directory(self.directory)  # the new day directory must survive a power cut too
        while True:
            name = segment_name(self.prefix, self.shard, stamp)
            sealed = directory / name
            path = directory / (name[: -len(".zst")] + OPEN_SUFFIX)
            if sealed.exists():
                stamp += 1_000_000
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            except FileExistsError:
                stamp += 1_000_000
                continue
            break
        os.fchmod(fd, FILE_MODE)  # the umask must not widen or narrow what operators rely on
        cur = _OpenSegment(path, fd, start_ns, header, day)
        self._write_all(cur, header)
        return cur

    def _seal(self, reason: str) -> None:
        cur = self._current
        assert cur is not None
        seal = cur.seal_meta(reason)
        index = encode_index(cur.frames, seal)
        seek = [*cur.seek, SeekEntry(len(index), 0, XXH64_EMPTY_LOW32)]
        self._write_all(cur, index + encode_seek_table(seek))
        os.fsync(cur.fd)
        os.close(cur.fd)
        final = self._sealed_name(cur)
        os.rename(cur.path, final)
        fsync_directory(final.parent)
        sealed = SealedSegment(final, cur.records, len(cur.frames), cur.raw_bytes, cur.offset)
        self.sealed.append(sealed)
        self.files_sealed += 1
        if self._on_sealed is not None:
            self._on_sealed(sealed)

    def _sealed_name(self, cur: _OpenSegment) -> Path:
        final = sealed_path(cur.path)
        if not self._name_by_data or not cur.frames:
            return final
        stamp = min(f.min_ts for f in cur.frames)
        while True:
            candidate = final.with_name(segment_name(self.prefix, self.shard, stamp))
            if candidate == final or not (candidate.exists() or open_path_for(candidate).exists()):
                return candidate
            stamp += 1_000_000

    def _fail(self, exc: OSError) -> None:
        cur = self._current
        where = cur.path if cur is not None else self.directory
        self.error = SegmentWriteError(describe_os_error(exc, where))
        if cur is not None:
            with contextlib.suppress(OSError):
                os.close(cur.fd)
            # The .open file now ends on a frame boundary; try to seal it in place so it needs no
            # recovery. When even that fails (disk still full), `ime-segments recover` does it later.
            with contextlib.suppress(OSError):
                self._reseal_after_failure(cur)
            self._current = None
        if self._on_error is not None:
            self._on_error(self.error)

    def _reseal_after_failure(self, cur: _OpenSegment) -> None:
        fd = os.open(cur.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, cur.offset)
            os.lseek(fd, cur.offset, os.SEEK_SET)
            seal = cur.seal_meta("write-error")
            index = encode_index(cur.frames, seal)
            tail = index + encode_seek_table([*cur.seek, SeekEntry(len(index), 0, XXH64_EMPTY_LOW32)])
            view = memoryview(tail)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, cur.offset)
            raise
        finally:
            os.close(fd)
        final = cur.path.with_name(cur.path.name[: -len(".open")])
        os.rename(cur.path, final)
        self.sealed.append(SealedSegment(final, cur.records, len(cur.frames), cur.raw_bytes, cur.offset))
        self.files_sealed += 1

    def _drain_after_failure(self) -> None:
        # Callers blocked on flush()/close() must wake up; pending batches are counted as lost.
        while True:
            try:
                op, arg = self._queue.get_nowait()
            except queue.Empty:
                return
            if op == "sync":
                arg.set()
            elif op == "frame":
                self.records_lost += arg.records


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
