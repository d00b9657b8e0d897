"""One export run: which segments to convert (the manifest), reading them frame by frame, writing part files.

Memory is bounded by `flush_frames`: rows are handed to the Parquet writers (one row group per table and
date) every that many frames, so a 1 GB recording is exported in the memory of one batch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from recorder.errors import UserError
from recorder.export.dataset import (
    MANIFEST,
    MANIFEST_VERSION,
    PartWriter,
    load_manifest,
    remove_leftovers,
    save_manifest,
)
from recorder.export.flatten import Flattener
from recorder.export.schema import TABLES
from recorder.model.record import Row
from recorder.segment.format import SegmentFormatError
from recorder.segment.naming import SEALED_SUFFIX, is_open
from recorder.segment.reader import Damage, SegmentFile, read_frame

DEFAULT_FLUSH_FRAMES = 32_768
NO_LOWER = -(1 << 63)
NO_UPPER = 1 << 63


@dataclass(frozen=True, slots=True)
class ExportOptions:
    out: Path
    contracts: frozenset[str] = frozenset()
    start_ns: int | None = None
    end_ns: int | None = None
    tables: tuple[str, ...] = TABLES
    flush_frames: int = DEFAULT_FLUSH_FRAMES

    def selection(self) -> dict[str, Any]:
        """What decides the content of the dataset: a later run into the same directory must match it."""
        return {"contracts": sorted(self.contracts), "from_ns": self.start_ns, "to_ns": self.end_ns,
                "tables": sorted(self.tables)}


@dataclass(slots=True)
class ExportSummary:
    exported: list[str] = field(default_factory=list)
    already: int = 0
    open_skipped: list[str] = field(default_factory=list)
    unsealed: list[str] = field(default_factory=list)  # .zst files not sealed properly (cut): exported, damaged
    rows: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    records: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    damage: list[Damage] = field(default_factory=list)
    leftovers_removed: int = 0
    native: bool = False  # the C scanner ran (else the Python paths parsed every frame)


def part_name(seg: SegmentFile) -> str:
    name = seg.path.name
    return name[: -len(SEALED_SUFFIX)] if name.endswith(SEALED_SUFFIX) else name


def export_segments(segments: Iterable[SegmentFile], options: ExportOptions,
                    progress: Callable[[int], None] | None = None) -> ExportSummary:
    """Convert every sealed segment not yet in OUT's manifest; open (still recording) files wait for a later run.

    A `.zst` file that is not sealed properly (cut) is damaged, not still recording: its intact frames are
    converted, and it is listed in `summary.unsealed`."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    selection = options.selection()
    if manifest is None:
        if (out / MANIFEST).exists():
            raise UserError(f"{out / MANIFEST} is unreadable; export into a new directory")
        manifest = {"version": MANIFEST_VERSION, "selection": selection, "segments": {}}
    elif manifest.get("selection") != selection:
        raise UserError(f"{out} holds an export with other options ({_describe(manifest.get('selection'))}); "
                        "use the same --contract/--from/--to/--tables, or another --out")
    done: dict[str, Any] = manifest.setdefault("segments", {})
    summary = ExportSummary(leftovers_removed=remove_leftovers(out))
    started = time.perf_counter()
    flattener = Flattener(options.contracts, options.tables)
    summary.native = flattener.native
    for seg in sorted(segments, key=lambda s: (s.shard, s.start_ns, s.path.name)):
        if not seg.sealed:
            if is_open(seg.path):
                summary.open_skipped.append(seg.path.name)
                continue
            # Named as sealed but not sealed properly (a copy cut part-way): no recorder will seal it, so waiting
            # would wait forever. Its intact frames are exported now; after `ime-segments recover` its size
            # differs from the manifest's and it is exported again.
            summary.unsealed.append(seg.path.name)
        previous = done.get(seg.path.name)
        if previous is not None and previous.get("size") == seg.size:
            summary.already += 1
            if progress is not None:
                progress(seg.records)  # the bar counts every sealed segment, done now or before
            continue
        before = Counter(flattener.counts)
        files, rows, records = _export_one(seg, options, flattener, progress, summary.damage)
        delta = Counter(flattener.counts)
        delta.subtract(before)
        done[seg.path.name] = {"size": seg.size, "records": records, "files": files, "rows": dict(rows),
                               "counts": {k: v for k, v in delta.items() if v}}
        save_manifest(out, manifest)  # only now is the segment "exported": a crash before re-exports it
        summary.exported.append(seg.path.name)
        summary.rows.update(rows)
        summary.records += records
        summary.input_bytes += seg.size
        summary.files += len(files)
        summary.output_bytes += sum((out / f).stat().st_size for f in files)
    summary.counts = flattener.counts
    summary.seconds = time.perf_counter() - started
    return summary


def _export_one(seg: SegmentFile, options: ExportOptions, flattener: Flattener,
                progress: Callable[[int], None] | None, damage: list[Damage]) -> tuple[list[str], Counter[str], int]:
    writer = PartWriter(options.out, part_name(seg), options.flush_frames)
    lo = options.start_ns if options.start_ns is not None else NO_LOWER
    hi = options.end_ns if options.end_ns is not None else NO_UPPER
    records = 0
    try:
        for first, block in segment_blocks(seg, lo, hi, damage, progress):
            flattener.add_block(block, seg.shard, seg.path.name, first, lo, hi)
            records += len(block)
            if flattener.pending >= options.flush_frames:
                _write(writer, flattener)
        flattener.counts["records_damaged"] += sum(d.records_lost or 0 for d in damage if d.path == seg.path)
        _write(writer, flattener)
        files = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return files, Counter(writer.rows), records


def segment_blocks(seg: SegmentFile, lo: int = NO_LOWER, hi: int = NO_UPPER, damage: list[Damage] | None = None,
                   progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, list[Row]]]:
    """(number of the first record in the file, verified records as stored) per data frame that may hold [lo, hi).

    Records come as stored (a block's receipts as one receipt-block record, format.decode_block's `expand=False`),
    so record k of a block is record number `first + k` of the file, the number the frame index counts: with
    receipts expanded, a redundant recording's numbers repeated across blocks. The index picks the frames, so the
    others are never decompressed; a damaged frame is skipped and reported in `damage`, the rest is still read.
    """
    first = 0
    dctx = zstandard.ZstdDecompressor()
    with open(seg.path, "rb", buffering=0) as fh:
        for info in seg.frames:
            index = first
            first += info.records
            if info.records and lo <= info.max_ts and info.min_ts < hi:
                try:
                    block = read_frame(fh, info, dctx, expand=False)
                except SegmentFormatError as exc:
                    if damage is not None:
                        damage.append(Damage(seg.path, info.offset, info.seq, str(exc), info.records))
                    block = None
                if block is not None:
                    yield index, block
            if progress is not None:
                progress(info.records)


def _write(writer: PartWriter, flattener: Flattener) -> None:
    for table, data in flattener.take().items():
        writer.write(table, data)


def _describe(selection: Any) -> str:
    if not isinstance(selection, dict):
        return "unknown"
    parts = []
    if selection.get("contracts"):
        parts.append("--contract " + " ".join(map(str, selection["contracts"])))
    if selection.get("from_ns") is not None:
        parts.append(f"--from {selection['from_ns']}")
    if selection.get("to_ns") is not None:
        parts.append(f"--to {selection['to_ns']}")
    tables = selection.get("tables")
    if isinstance(tables, list) and sorted(tables) != sorted(TABLES):
        parts.append("--tables " + ",".join(map(str, tables)))
    return " ".join(parts) or "everything"
