"""Records -> rows of the exported tables: a pure core (no files), fed one decompressed block at a time.

Two implementations, one meaning. When it is built (and IME_NATIVE does not turn it off), the C scanner
(recorder/export/_scan.c) takes every TEXT frame that is strict JSON of exactly the documented shape (integers
that fit int64, no escapes, valid UTF-8; its header comment lists the rules) and writes the values straight into
column buffers. It is told the keys and columns by `scanner_layout()`, from schema.py, so the message format is
described in feed/message.py only. Every frame it refuses, and every frame when it is not in use, goes to the
Python paths (pypaths.py: a fast path for the documented shape, feed/message.py's parser for everything else),
which decide what is known, what is extra and what is malformed. Tests check that both give identical tables,
in the order the records came in (rows of the scanner and of the Python paths are merged by arrival).

Why C and not a library reader: pyarrow.json with an explicit schema, the fastest of the library readers tried
(polars' NDJSON reader was slower), costs ~4 us a message where the whole Python fast path costs ~6.5 us; the
export ran at 0.98-1.45x the Python paths' rate with it (median 1.17x), at 3.7-4.8x with the scanner (same runs of
benchmarks/test_export.py; 2.2-7.6x in five later runs on a loaded machine; the project keeps native code only
where it is at least 2x on what a user waits for: recorder/native.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from recorder import native
from recorder.export import schema as S
from recorder.export.columns import check_groups, report_odd, section_columns
from recorder.export.pypaths import FRAME_WIDTH, PyPaths
from recorder.export.tables import frame_columns, merge_scanned, section_table, side_tables
from recorder.feed.message import ID_FIELD, NAME_FIELD
from recorder.model.record import Row

# None when installed without a C compiler: the Python paths do everything, more slowly. IME_NATIVE=0 (or =scan):
# the Python paths for every frame even when the scanner is built; the export's summary says which ran.
_scan = native.module("scan")
NATIVE = native.on("scan")
ENVELOPE_KEYS = ("channel", ID_FIELD, NAME_FIELD, "timestamp", "data")


def scanner_layout(collect: Iterable[str] = S.SECTION_TABLES) -> list[tuple[str, list[tuple[tuple[str, ...], str]],
                                                                              bool]]:
    """What the C scanner accepts and fills, per section table in SECTION_TABLES order: the section's key under
    `data`, every column's path under it with its kind in schema order (string columns, then integer ones) and
    whether its rows are collected. Its objects must hold exactly these keys."""
    return [(S.SECTION_OF[t], [(path[1:], "str") for _, path in S.STR_COLUMNS.get(t, [])]
             + [(path[1:], "int") for _, path in S.INT_COLUMNS[t]], t in collect) for t in S.SECTION_TABLES]


class Flattener:
    """Accumulates rows for every table; `take()` turns them into Arrow tables and starts over.

    What a frame becomes never depends on the tables selected: those decide only which tables are built.
    """

    def __init__(self, contracts: Iterable[str] = (), tables: Iterable[str] = S.TABLES, native: bool = True) -> None:
        """`native=False` runs the Python paths only, even where the C scanner is in use (tests compare them)."""
        self.contracts = frozenset(contracts)
        self.tables = frozenset(tables)
        self.counts: Counter[str] = Counter()
        self._py = PyPaths(self.contracts, self.counts)
        self._scanner = _scan.Scanner(ENVELOPE_KEYS, scanner_layout(self.tables),
                                      set(self.contracts) or None) if native and NATIVE else None
        self._reset()

    @property
    def native(self) -> bool:
        """True when the C scanner takes the frames it can (else the Python paths take all)."""
        return self._scanner is not None

    def _reset(self) -> None:
        self._py.reset()
        # With the C scanner: records fed since the last take (a frame's arrival number is `_arrivals` at its
        # block plus its place there), the arrival number of each Python-path frame, and the segment names.
        self._arrivals = 0
        self._py_seq: list[int] = []
        self._segments: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Frames collected since the last take(), on all paths."""
        return self._py.pending + (self._scanner.pending if self._scanner is not None else 0)

    def add_block(self, records: list[Row], shard: int, segment: str,
                  first_record: int, lo: int = -(1 << 63), hi: int = 1 << 63) -> None:
        """Records (ts_ns, conn, kind, payload) of one block, those received in [lo, hi) only.

        `first_record` is the index of the block's first record in its file (the `record` column).
        """
        scanner = self._scanner
        if scanner is None:
            self._py.add(records, range(first_record, first_record + len(records)), shard, segment, lo, hi)
            return
        seq = self._arrivals
        self._arrivals += len(records)
        refused = scanner.scan(records, first_record, shard, self._segments.setdefault(segment, len(self._segments)),
                               lo, hi, seq)
        parsed, filtered = scanner.counts()
        self.counts.update(parsed=parsed, parsed_fast=parsed, parsed_c=parsed, filtered_out=filtered)
        if refused:
            frames = self._py.frames
            before = len(frames)
            self._py.add([records[i] for i in refused], [first_record + i for i in refused], shard, segment, lo, hi)
            # A record gives at most one frame: its arrival number follows from its `record` value.
            self._py_seq.extend(seq + record - first_record for record in frames[before + 4::FRAME_WIDTH])

    def take(self) -> dict[str, pa.Table]:
        """Arrow tables of everything added since the last take (only non-empty, selected tables)."""
        py = self._py
        checked = check_groups(py)
        report_odd(py, checked, self.counts)
        out: dict[str, pa.Table] = {}
        order: dict[str, np.ndarray] = {}  # frame index of each section row (Python paths)
        if py.frames:
            base = frame_columns(py.frames)
            for t, cols in section_columns(checked).items():
                if t in self.tables and len(cols[0]):
                    order[t] = cols[0]
                    out[t] = section_table(t, base, cols)
            out |= side_tables(py, base, self.tables)
        if self._scanner is not None:
            merge_scanned(out, order, self._scanner.take(), self._py_seq, list(self._segments), self.tables)
        self._reset()
        return out


__all__ = ["NATIVE", "Flattener", "scanner_layout"]
