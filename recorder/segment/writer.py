"""SegmentWriter: cheap appends on the caller's thread; compression, file I/O and rotation on its own thread.

The recorder's event loop must never wait for zstd or the disk, so `append` only packs a record header
into the current batch (encoder.RecordBatch). A full batch (by size, or by age, or at a day's end) is handed over
a queue to the writer thread, which writes it through the file policy (files.SegmentFiles: naming, rotation,
fsync, sealing) and the format (encoder.SegmentEncoder).

Memory is bounded: when more than `max_backlog_bytes` of raw records wait for the writer thread,
`on_backlog(True)` asks the owner to stop reading its sockets (TCP then pushes back on the sender);
`on_backlog(False)` says it may resume. Nothing is dropped to keep memory bounded.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from itertools import accumulate, compress, islice, repeat
from operator import add, ge
from pathlib import Path
from typing import Any

from recorder import __version__, clock
from recorder.model.record import RECORD_HEADER, RecordKind, Row, encode_receipt
from recorder.model.settings import DEFAULTS
from recorder.segment.encoder import RecordBatch
from recorder.segment.files import ALL_TIME, SealedSegment, SegmentFiles, SegmentWriteError, describe_os_error
from recorder.segment.layout import DayLayout

log = logging.getLogger("recorder.segment.writer")

_DEFAULT = DEFAULTS.storage  # ime-record's defaults
_IDLE_S = 0.25  # the writer thread looks at the clock this often when nothing comes (rotation, fsync)


class _Backlog:
    """Raw bytes handed to the writer thread and not written yet (both threads count them): above `limit` the
    owner is asked to stop reading (`on_change(True)`), at half of it told it may resume (`on_change(False)`)."""

    def __init__(self, limit: int, on_change: Callable[[bool], None] | None) -> None:
        self.limit = limit
        self.bytes = 0
        self.paused = False
        self._lock = threading.Lock()
        self._on_change = on_change

    def change(self, size: int) -> None:
        """`size` bytes handed over (or, negative, written)."""
        with self._lock:
            self.bytes += size
            flip = self.bytes <= self.limit // 2 if self.paused else self.bytes > self.limit
            if flip:
                self.paused = paused = not self.paused
        if flip and self._on_change is not None:
            self._on_change(paused)


class SegmentWriter:
    def __init__(
        self,
        directory: Path | str,
        *,
        shard: int = 0,
        meta: dict[str, Any] | None = None,
        prefix: str = _DEFAULT.prefix,
        level: int = _DEFAULT.level,
        frame_bytes: int = _DEFAULT.frame_bytes,
        flush_ms: float = _DEFAULT.flush_ms,
        rotate_bytes: int = _DEFAULT.rotate_bytes,
        rotate_seconds: float = _DEFAULT.rotate_seconds,
        max_backlog_bytes: int = _DEFAULT.max_backlog_bytes,
        fsync_interval_s: float = 1.0,
        on_backlog: Callable[[bool], None] | None = None,
        on_error: Callable[[SegmentWriteError], None] | None = None,
        on_sealed: Callable[[SealedSegment], None] | None = None,
        fault_enospc_after_bytes: int | None = None,
        days: DayLayout | None = None,
        name_by_data: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.frame_bytes = frame_bytes
        self.flush_ns = int(flush_ms * 1_000_000)
        self._on_error = on_error
        # Day folders (layout.DayLayout), or None for the flat layout. With them, no frame and no file holds
        # records of two days: this thread cuts the batch when a record of a new day comes (`_day_end`), and
        # the files start a new file for a batch of another day than the current file's.
        self._days = days
        self._day_end = ALL_TIME[0] if days is not None else ALL_TIME[1]  # the first record sets it
        meta = {"recorder_version": __version__, "host": socket.gethostname(), "pid": os.getpid(), "shard": shard,
                "compression_level": level, "frame_bytes": frame_bytes, "flush_ms": flush_ms, **(meta or {})}
        self.files = SegmentFiles(
            self.directory, shard=shard, prefix=prefix, level=level, meta=meta, rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds, fsync_interval_s=fsync_interval_s, days=days, name_by_data=name_by_data,
            budget=[fault_enospc_after_bytes] if fault_enospc_after_bytes is not None else None,
            on_sealed=on_sealed)

        self._batch = RecordBatch(1)
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._backlog = _Backlog(max_backlog_bytes, on_backlog)
        self.error: SegmentWriteError | None = None
        self.records_lost = 0
        self._aborted = False
        # Figures for status lines; written by the writer thread, read anywhere.
        self.records_written = self.frames_written = self.raw_bytes_written = 0

        # Open the first file here, on the caller's thread, so an unwritable directory fails at start.
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.files.current = self.files.open(clock.time_ns())
        except OSError as exc:
            raise SegmentWriteError(describe_os_error(exc, self.directory)) from None
        self._thread = threading.Thread(target=self._run, name=f"segment-writer-s{shard:02d}", daemon=True)
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        """The writer thread's kernel thread id (for scheduling it: record/timeslice.py)."""
        return self._thread.native_id

    @property
    def bytes_written(self) -> int:
        return self.files.bytes_written

    @property
    def files_sealed(self) -> int:
        return len(self.files.sealed)

    @property
    def sealed(self) -> list[SealedSegment]:
        return self.files.sealed

    @property
    def backlog_bytes(self) -> int:
        return self._backlog.bytes + self._batch.raw_size

    @property
    def current_path(self) -> Path | None:
        cur = self.files.current
        return cur.path if cur is not None else None

    # --- caller's thread ------------------------------------------------------------------------

    def append(self, ts_ns: int, conn: int, kind: int, payload: bytes) -> None:
        if ts_ns >= self._day_end:
            self._next_day(ts_ns)
        batch = self._batch
        batch.append(ts_ns, conn, kind, payload)
        if batch.raw_size >= self.frame_bytes or ts_ns - batch.first_ts >= self.flush_ns:
            self.cut()

    def extend(self, rows: Sequence[Row]) -> None:
        """`append` for each row in turn, cut into frames at exactly the same records, a frame's worth at a time
        (the merge's writer; see RecordBatch.extend)."""
        if not rows:
            return
        if self._days is not None:
            for row in rows:  # cut at each day's end (the merge, whose speed this is for, writes no day folders)
                self.append(*row)
            return
        stamps, conns, kinds, payloads = zip(*rows, strict=True)
        ends = list(accumulate(map(add, map(len, payloads), repeat(RECORD_HEADER.size))))
        start = 0
        while start < len(stamps):
            end, cut = _batch_end(self._batch, stamps, ends, start, self.frame_bytes, self.flush_ns)
            self._batch.extend(stamps[start:end], conns[start:end], kinds[start:end], payloads[start:end])
            if cut:
                self.cut()
            start = end

    def original_ref(self, conn: int) -> int:
        """The record `conn` appends next, as one int for `append_copy`: the connection, the index in the batch and
        the batch's serial, in 32, 32 and the rest of the bits. An int, not a tuple, because a Deduper holds one per
        live message (see recorder/segment/dedupe.py on the garbage collector). `_ref` spelled out: this runs for
        every message of redundant copies."""
        batch = self._batch
        return conn | (batch.records << 32) | (batch.serial << 64)

    @staticmethod
    def _ref(conn: int, serial: int, index: int) -> int:
        return conn | (index << 32) | (serial << 64)

    def append_copy(self, ts_ns: int, conn: int, orig_ts_ns: int, orig_ref: int) -> None:
        """A later copy, arrived on `conn`, of the record `orig_ref` names (see `original_ref`), received at
        `orig_ts_ns`.

        It joins the batch's receipt columns: by the original's index while that is in the batch, with its own
        time and the original's connection otherwise. Only in a batch with no record yet is it a 12-byte receipt
        record of its own.
        """
        if ts_ns >= self._day_end:
            self._next_day(ts_ns)
        batch = self._batch
        if not batch.records:
            self.append(ts_ns, conn, RecordKind.RECEIPT, encode_receipt(orig_ref & 0xFFFFFFFF, ts_ns - orig_ts_ns))
            return
        if orig_ref >> 64 == batch.serial:
            batch.append_near_receipt(ts_ns, conn, (orig_ref >> 32) & 0xFFFFFFFF, ts_ns - orig_ts_ns)
        else:
            batch.append_far_receipt(ts_ns, conn, orig_ref & 0xFFFFFFFF, ts_ns - orig_ts_ns)
        if batch.raw_size >= self.frame_bytes or ts_ns - batch.first_ts >= self.flush_ns:
            self.cut()

    def position(self) -> tuple[int, int]:
        """Where the next appended record will be: (batch serial, index in the batch), for `append_receipt`."""
        return self._batch.serial, self._batch.records

    def append_receipt(self, ts_ns: int, conn: int, orig_ts_ns: int, orig_conn: int,
                       orig_position: tuple[int, int]) -> None:
        """`append_copy` of the record appended at `orig_position` (see `position`) by `orig_conn`."""
        self.append_copy(ts_ns, conn, orig_ts_ns, self._ref(orig_conn, *orig_position))

    def _next_day(self, ts_ns: int) -> None:
        """A record of a later day: what the batch holds is of the day before, and goes in a frame of its own."""
        self.cut()
        self._day_end = self._days.day_bounds(ts_ns)[1] if self._days is not None else ALL_TIME[1]

    def cut(self) -> None:
        """Hand the current batch to the writer thread (no-op when empty)."""
        batch = self._batch
        if batch.records == 0:
            return
        self._batch = RecordBatch(batch.serial + 1)
        if self.error is not None:
            self.records_lost += batch.records
            return
        self._backlog.change(batch.raw_size)
        self._queue.put(("frame", batch))

    def tick(self, now_ns: int | None = None) -> None:
        """Call every few tens of ms: cuts a batch that has grown old while the feed was quiet."""
        batch = self._batch
        if batch.records and (now_ns if now_ns is not None else clock.time_ns()) - batch.first_ts >= self.flush_ns:
            self.cut()

    def flush(self, timeout: float | None = None) -> bool:
        """Cut the batch and wait until the writer thread has written everything queued so far."""
        self.cut()
        done = threading.Event()
        self._queue.put(("sync", done))
        return done.wait(timeout)

    def update_meta(self, **fields: Any) -> None:
        """Header keys for the files opened from now on (the current one keeps its header)."""
        self._queue.put(("meta", fields))

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
        return list(self.files.sealed)

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
        files = self.files
        while True:
            try:
                op, arg = self._queue.get(timeout=_IDLE_S)
            except queue.Empty:
                op, arg = "idle", None
            if self._aborted:
                files.abandon()
                return
            try:
                if op == "frame":
                    self._write(arg)
                elif op == "sync":
                    arg.set()
                elif op == "meta":
                    files.meta = {**files.meta, **arg}
                elif op == "rotate":
                    files.rotate("rotated", clock.time_ns())
                elif op == "close":
                    files.close(arg)
                    return
                files.tick(clock.time_ns())
            except OSError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # a bug must not leave the recorder waiting on a dead thread
                log.exception("segment writer thread failed")
                self._fail(OSError(errno.EIO, f"internal error: {exc}"))
                return

    def _write(self, batch: RecordBatch) -> None:
        self.files.write(batch)
        raw_size = batch.raw_size
        self.records_written += batch.records  # the receipt columns' record included, as the index counts it
        self.frames_written += 1
        self.raw_bytes_written += raw_size
        self._backlog.change(-raw_size)

    def _fail(self, exc: OSError) -> None:
        # The .open file ends on a frame boundary; sealed in place when the disk allows it (else `ime-segments
        # recover` does it later).
        self.error = SegmentWriteError(describe_os_error(exc, self.files.failed()))
        if self._on_error is not None:
            self._on_error(self.error)
        # Callers blocked on flush()/close() must wake up; pending batches are counted as lost.
        while not self._queue.empty():  # this thread is the only one that takes from the queue
            op, arg = self._queue.get_nowait()
            if op == "sync":
                arg.set()
            elif op == "frame":
                self.records_lost += arg.records


def _batch_end(batch: RecordBatch, stamps: Sequence[int], ends: Sequence[int], start: int, frame_bytes: int,
               flush_ns: int) -> tuple[int, bool]:
    """Where `append`, given the rows from `start` on one at a time, would cut `batch`: (the end of the rows that go
    into it, whether it is cut after them). `ends`: each row's end, in bytes, counted from the first row. A batch is
    cut at the first row that brings it to frame_bytes, or that is flush_ns younger than its first row."""
    n = len(stamps)
    base = ends[start - 1] if start else 0
    full = bisect_left(ends, frame_bytes - batch.raw_size + base, start)
    first = batch.first_ts if batch.records else stamps[start]
    old = next(compress(range(start, n), map(ge, islice(stamps, start, None), repeat(first + flush_ns))), n)
    end = min(full, old, n - 1) + 1
    return end, end - 1 in (full, old)
