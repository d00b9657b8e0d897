"""Reading segment files: the index (without decompressing), verified records, time seeks, merges, and the
files a command line names.

Every data frame is checked before any of its records is yielded: the descriptor's CRC, the CRC of
the compressed bytes, the zstd content checksum, the decompressed size and the record layout. A frame
that fails is skipped and reported as `Damage`; the file's other frames are still read. A damaged
descriptor is skipped by resynchronising on the next valid one. A truncated tail (a crash mid-write)
ends the file and is reported with the number of records salvaged.

Frame sequence numbers must increase: a frame whose number was already seen is a repeat (damage; its
records are read once), one that comes after a higher number is out of order (damage; frames are read
in sequence order), so no record is ever yielded twice.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO

import zstandard

from recorder.errors import UserError
from recorder.model.record import Record, RecordKind, Row
from recorder.segment.encoder import seek_entries
from recorder.segment.format import (
    DESCRIPTOR_CONTENT_SIZE,
    DESCRIPTOR_FRAME_SIZE,
    SEEK_FOOTER,
    SKIP_HEAD,
    SKIPPABLE_MAGIC_DESCRIPTOR,
    SKIPPABLE_MAGIC_HEADER,
    SKIPPABLE_MAGIC_INDEX,
    SKIPPABLE_MAGIC_MAX,
    SKIPPABLE_MAGIC_MIN,
    SKIPPABLE_MAGIC_SEEK_TABLE,
    TAG_DESCRIPTOR,
    ZSTD_FRAME_MAGIC,
    FooterIndex,
    FrameInfo,
    SeekEntry,
    SegmentFormatError,
    SegmentHeader,
    TruncatedHeaderError,
    crc32,
    decode_block,
    decode_descriptor_content,
    decode_header_content,
    decode_index_content,
    decode_seek_footer,
    decode_seek_table,
    seek_table_size,
)
from recorder.segment.naming import MERGE_STAGING, OPEN_SUFFIX, SEALED_SUFFIX
from recorder.segment.ordered import merged

MAX_HEADER_BYTES = 16 << 20
# What every descriptor starts with: a reader that lost its place searches for it.
DESCRIPTOR_SYNC = SKIP_HEAD.pack(SKIPPABLE_MAGIC_DESCRIPTOR, DESCRIPTOR_CONTENT_SIZE) + TAG_DESCRIPTOR
RESYNC_CHUNK = 1 << 20
# Reading records: frames are read in file order, a seek and a read each. Buffered, that is one system call per
# MiB instead of two per ~45 kB frame; each call releases the GIL, and while writer threads run (a merge) the
# reading thread may then wait for it to come back (cProfile put a merge's seeks at up to a fifth of its time).
READ_BUFFER = 1 << 20
_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class Damage:
    """A part of a file that could not be read; says where and why."""

    path: Path
    offset: int
    frame: int | None
    reason: str
    records_lost: int | None = None  # known when a valid descriptor named the count

    def describe(self) -> str:
        """Where and why, without the path."""
        where = f"frame {self.frame} at offset {self.offset}" if self.frame is not None else f"offset {self.offset}"
        lost = f" ({self.records_lost} records unreadable)" if self.records_lost else ""
        return f"{where}: {self.reason}{lost}"

    def __str__(self) -> str:
        return f"{self.path}: {self.describe()}"


@dataclass(slots=True)
class SegmentFile:
    """An opened segment: header, frame index and what was found damaged while indexing."""

    path: Path
    header: SegmentHeader
    frames: list[FrameInfo]
    sealed: bool
    size: int
    seal: dict[str, object] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)
    truncated: bool = False
    records_salvaged: int = 0

    # --- index-only figures (no decompression) --------------------------------------------------

    @property
    def shard(self) -> int:
        value = self.header.meta.get("shard", 0)
        return value if isinstance(value, int) else 0

    @property
    def start_ns(self) -> int:
        value = self.header.meta.get("start_ns", 0)
        return value if isinstance(value, int) else 0

    @property
    def records(self) -> int:
        return sum(f.records for f in self.frames)

    @property
    def events(self) -> int:
        return sum(f.events for f in self.frames)

    @property
    def raw_bytes(self) -> int:
        return sum(f.raw_size for f in self.frames)

    @property
    def compressed_bytes(self) -> int:
        return sum(f.compressed_size for f in self.frames)

    @property
    def min_ts(self) -> int | None:
        return min((f.min_ts for f in self.frames if f.records), default=None)

    @property
    def max_ts(self) -> int | None:
        return max((f.max_ts for f in self.frames if f.records), default=None)

    # --- records --------------------------------------------------------------------------------

    def iter_records(self, start_ns: int | None = None, end_ns: int | None = None,
                     expand: bool = True) -> Iterator[Record]:
        """Verified records with start_ns <= ts < end_ns, in file order; damage goes to `self.damage`.

        `expand=False`: as stored (receipt blocks unexpanded), so that the k-th record of an unfiltered read is
        record number k of the file (format.decode_block)."""
        for records in self.record_blocks(start_ns, end_ns, expand):
            yield from records

    def record_blocks(self, start_ns: int | None = None, end_ns: int | None = None,
                      expand: bool = True) -> Iterator[list[Record]]:
        """`iter_records` a frame at a time (what the merge of several files takes)."""
        shard = self.shard
        for rows in self.iter_blocks(start_ns, end_ns, expand=expand):
            if start_ns is not None or end_ns is not None:
                lo = start_ns if start_ns is not None else -(1 << 63)
                hi = end_ns if end_ns is not None else 1 << 63
                rows = [row for row in rows if lo <= row[0] < hi]
            yield as_records(rows, shard)

    def iter_blocks(self, start_ns: int | None = None, end_ns: int | None = None,
                    conns: Mapping[int, int] | None = None,
                    expand: bool = True) -> Iterator[list[Row]]:
        """Each selected frame's records, verified; the index picks frames, so earlier ones are never read.
        With `conns`, each record's connection id is conns[conn] (see format.decode_block)."""
        lo = start_ns if start_ns is not None else -(1 << 63)
        hi = end_ns if end_ns is not None else 1 << 63
        for rows in self.read_frames([f for f in self.frames if f.records and f.max_ts >= lo and f.min_ts < hi],
                                     conns, expand):
            self.records_salvaged += len(rows)
            yield rows

    def read_frames(self, frames: list[FrameInfo], conns: Mapping[int, int] | None = None, expand: bool = True,
                    report: Callable[[FrameInfo], bool] | None = None) -> Iterator[list[Row]]:
        """These frames' records, verified, in turn. A frame that fails is skipped, and kept in `damage` (when
        `report` says so of it)."""
        if not frames:
            return
        dctx = zstandard.ZstdDecompressor()
        with open(self.path, "rb", buffering=READ_BUFFER) as fh:
            for info in frames:
                try:
                    rows = read_frame(fh, info, dctx, conns, expand)
                except SegmentFormatError as exc:
                    if report is None or report(info):
                        self.damage.append(Damage(self.path, info.offset, info.seq, str(exc), info.records))
                    continue
                yield rows

    def verify(self, decompress: bool = True, progress: Callable[[int], None] | None = None) -> list[Damage]:
        """Check every frame, checksum and the seal; return all damage found (empty = intact).

        Without `decompress`, a frame is checked by the CRC32 of its compressed bytes only: that finds any
        byte damaged since it was written, reading at disk speed (decompressing runs at ~20 MB/s of file).
        `progress` is told the compressed bytes of each frame checked.
        """
        found: list[Damage] = list(self.damage)
        dctx = zstandard.ZstdDecompressor()
        with open(self.path, "rb", buffering=READ_BUFFER if not decompress else 0) as fh:
            for info in self.frames:
                try:
                    if decompress:
                        check_timestamps(read_frame(fh, info, dctx), info)
                    else:
                        fh.seek(info.data_offset)
                        check_frame_bytes(fh.read(info.compressed_size), info)
                except SegmentFormatError as exc:
                    found.append(Damage(self.path, info.offset, info.seq, str(exc), info.records))
                if progress is not None:
                    progress(info.compressed_size)
            if self.sealed:
                found.extend(verify_seal(fh, self))
        return found


def as_records(rows: list[Row], shard: int) -> list[Record]:
    """Rows of `shard` as Records, built in C (tuple.__new__ mapped over the columns): Record()'s own __new__ is a
    Python call, and readers build hundreds of thousands of these a second."""
    if not rows:
        return []
    stamps, conns, kinds, payloads = zip(*rows, strict=True)
    return list(map(_new_tuple, repeat(Record), zip(stamps, repeat(shard), conns, kinds, payloads, repeat(None),
                                                   strict=False)))


def read_frame(fh: BinaryIO, info: FrameInfo, dctx: zstandard.ZstdDecompressor,
               conns: Mapping[int, int] | None = None, expand: bool = True) -> list[Row]:
    fh.seek(info.data_offset)
    return decode_frame(fh.read(info.compressed_size), info, dctx, conns, expand)


def decode_frame(data: bytes, info: FrameInfo, dctx: zstandard.ZstdDecompressor,
                 conns: Mapping[int, int] | None = None, expand: bool = True) -> list[Row]:
    """Verify a data frame's compressed bytes against its descriptor, then split its block."""
    check_frame_bytes(data, info)
    try:
        block = dctx.decompress(data, max_output_size=info.raw_size)
    except zstandard.ZstdError as exc:
        raise SegmentFormatError(f"zstd frame does not decompress: {exc}") from None
    if len(block) != info.raw_size:
        raise SegmentFormatError(f"data frame decompressed to {len(block)} bytes, descriptor says {info.raw_size}")
    return decode_block(block, info.records, conns, expand)


def check_frame_bytes(data: bytes, info: FrameInfo) -> None:
    if len(data) != info.compressed_size:
        raise SegmentFormatError(f"data frame truncated: {len(data)} of {info.compressed_size} bytes present")
    if crc32(data) != info.frame_crc:
        raise SegmentFormatError("data frame checksum (CRC32 of compressed bytes) mismatch")


def check_timestamps(records: list[Row], info: FrameInfo) -> None:
    if records:
        stamps = [r[0] for r in records]
        if min(stamps) != info.min_ts or max(stamps) != info.max_ts:
            raise SegmentFormatError("record timestamps disagree with the frame index")


def verify_seal(fh: BinaryIO, seg: SegmentFile) -> list[Damage]:
    """The footer index and seek table must describe exactly the frames that are in the file."""
    try:
        index, entries, index_offset = read_seal(fh, seg.size)
    except SegmentFormatError as exc:
        return [Damage(seg.path, seg.size, None, f"seal: {exc}")]
    walked, problems, _ = walk_frames(fh, seg.path, seg.size)
    walked_end = walked[-1].end_offset if walked else None
    if walked_end is not None and walked_end != index_offset:
        problems.append(Damage(seg.path, walked_end, None, "frames do not end where the footer index starts"))
    if list(index.frames) != walked:
        problems.append(Damage(seg.path, index_offset, None, "footer index disagrees with the frames in the file"))
    if entries != seek_entries(walked[0].offset if walked else index_offset, walked, entries[-1].compressed_size):
        problems.append(Damage(seg.path, index_offset, None, "seek table entries do not match the frames"))
    return problems


def read_exact(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def read_seal(fh: BinaryIO, size: int) -> tuple[FooterIndex, list[SeekEntry], int]:
    """Footer index, seek table entries and the index's offset, using only the end of the file."""
    if size < SEEK_FOOTER.size:
        raise SegmentFormatError("file too short for a seek table")
    frames = decode_seek_footer(read_exact(fh, size - SEEK_FOOTER.size, SEEK_FOOTER.size))
    table_size = seek_table_size(frames)
    if frames < 2 or table_size > size:
        raise SegmentFormatError("seek table is larger than the file")
    entries = decode_seek_table(read_exact(fh, size - table_size, table_size))
    index_size = entries[-1].compressed_size
    index_offset = size - table_size - index_size
    if index_offset < 0 or sum(e.compressed_size for e in entries) != size - table_size:
        raise SegmentFormatError("seek table sizes do not add up to the file size")
    raw = read_exact(fh, index_offset, index_size)
    magic, content_size = SKIP_HEAD.unpack_from(raw)
    if magic != SKIPPABLE_MAGIC_INDEX or content_size != index_size - SKIP_HEAD.size:
        raise SegmentFormatError("footer index frame not found where the seek table says")
    return decode_index_content(raw[SKIP_HEAD.size:]), entries, index_offset


def header_end(fh: BinaryIO) -> int:
    """Where a segment's header ends: its first frame (or its seal) starts there."""
    fh.seek(0)
    _, header_len = SKIP_HEAD.unpack(fh.read(SKIP_HEAD.size))
    return SKIP_HEAD.size + header_len


def walk_frames(fh: BinaryIO, path: Path, size: int) -> tuple[list[FrameInfo], list[Damage], bool]:
    """Hop from descriptor to descriptor without decompressing. Returns (frames, damage, truncated).

    The one walk every reader, `verify` and `recover` use. Frames come in file order, unchecked for sequence
    (see `order_frames`). A frame is taken when a valid descriptor says it ends where the next valid descriptor,
    the seal or the end of the file starts; when it does not, the next valid descriptor is searched for from
    just after the last good descriptor, not from where that descriptor claimed its frame ends: a frame that
    lost bytes then costs that frame only, instead of hiding the intact frame its claimed end falls into.
    """
    offset = header_end(fh)
    floor = offset  # a resynchronising search starts here: just after the last valid descriptor
    frames: list[FrameInfo] = []
    damage: list[Damage] = []
    while offset < size:
        found = _frame_at(fh, offset, size)
        if found is None:  # the seal: the frames end here
            return frames, damage, False
        if isinstance(found, FrameInfo) and found.end_offset <= size:
            frames.append(found)
            floor = found.data_offset
            offset = found.end_offset
            continue
        if isinstance(found, FrameInfo):  # a valid descriptor whose frame runs past the end of the file
            floor = found.data_offset
        nxt = find_descriptor(fh, floor, size)
        if nxt is not None and frames and nxt < frames[-1].end_offset and frames[-1].end_offset == offset:
            # What the previous descriptor claimed as its frame holds the next descriptor: bytes of it were lost.
            damage.append(_cut_short(path, frames.pop(), nxt))
        elif isinstance(found, FrameInfo):
            if nxt is None:
                damage.append(Damage(path, offset, found.seq, "truncated tail: data frame is missing its last "
                                                              f"{found.end_offset - size} bytes", found.records))
                return frames, damage, True
            damage.append(_cut_short(path, found, nxt))
        elif nxt is None:
            if found.startswith("truncated"):
                damage.append(Damage(path, offset, None, found))
            else:
                damage.append(Damage(path, offset, None, f"corrupt: {found}; no frame descriptor follows: "
                                                         f"the last {size - offset} bytes are unreadable"))
            return frames, damage, True
        else:
            damage.append(Damage(path, offset, None, f"corrupt: {found}; skipped {nxt - offset} bytes "
                                                     f"to the next frame descriptor at offset {nxt}"))
        offset = nxt
    return frames, damage, False


def _cut_short(path: Path, frame: FrameInfo, nxt: int) -> Damage:
    return Damage(path, frame.offset, frame.seq, f"data frame cut short: the next frame descriptor starts at offset "
                                                 f"{nxt}, {frame.end_offset - nxt} bytes before its claimed end",
                  frame.records)


def _frame_at(fh: BinaryIO, offset: int, size: int) -> FrameInfo | str | None:
    """What starts at `offset`: a valid descriptor (its frame may run past the end of the file), the seal (None),
    or why neither (a reason starting "truncated" when the file ends inside a frame header, descriptor or seal)."""
    fh.seek(offset)
    head = fh.read(SKIP_HEAD.size)
    if len(head) < SKIP_HEAD.size:
        return "truncated tail: partial frame header"
    magic, content_size = SKIP_HEAD.unpack(head)
    if magic in (SKIPPABLE_MAGIC_INDEX, SKIPPABLE_MAGIC_SEEK_TABLE):
        if is_seal_start(fh, offset, size):
            return None
        if offset + SKIP_HEAD.size + content_size > size:
            return "truncated tail: the seal (footer index and seek table) is cut off"
        return "the seal (footer index and seek table) is damaged"
    if magic != SKIPPABLE_MAGIC_DESCRIPTOR:
        return "a zstd frame with no descriptor" if magic == ZSTD_FRAME_MAGIC else f"unknown magic {magic:#010x}"
    if content_size != DESCRIPTOR_CONTENT_SIZE:
        return f"frame descriptor has {content_size} bytes, expected {DESCRIPTOR_CONTENT_SIZE}"
    content = fh.read(content_size)
    if len(content) < content_size:
        return "truncated tail: partial frame descriptor"
    try:
        return decode_descriptor_content(content, offset)
    except SegmentFormatError as exc:
        return str(exc)


def is_seal_start(fh: BinaryIO, offset: int, size: int) -> bool:
    """Whether a valid footer index (or the seek table) starts at `offset`: then the frames end there.

    Checked, not assumed from the magic alone: one flipped bit turns a descriptor's magic into these.
    """
    fh.seek(offset)
    magic, content_size = SKIP_HEAD.unpack(fh.read(SKIP_HEAD.size))
    end = offset + SKIP_HEAD.size + content_size
    if magic == SKIPPABLE_MAGIC_SEEK_TABLE:
        return end == size
    if end > size:
        return False
    try:
        decode_index_content(fh.read(content_size))
    except SegmentFormatError:
        return False
    return True


def find_descriptor(fh: BinaryIO, start: int, size: int) -> int | None:
    """Offset of the first valid descriptor (its CRC checked) at or after `start`, or None."""
    pos = start
    while pos < size:
        fh.seek(pos)
        # Overlap by one descriptor, so that one cut by the chunk boundary is found in this chunk.
        buf = fh.read(RESYNC_CHUNK + DESCRIPTOR_FRAME_SIZE)
        i = buf.find(DESCRIPTOR_SYNC)
        while 0 <= i < RESYNC_CHUNK:
            content = buf[i + SKIP_HEAD.size:i + DESCRIPTOR_FRAME_SIZE]
            try:
                decode_descriptor_content(content, pos + i)
            except SegmentFormatError:
                i = buf.find(DESCRIPTOR_SYNC, i + 1)
                continue
            return pos + i
        pos += RESYNC_CHUNK
    return None


def order_frames(frames: list[FrameInfo], path: Path) -> tuple[list[FrameInfo], list[Damage]]:
    """Each frame number once, in sequence order; a repeated or out-of-order frame is reported as damage.

    Writers number frames 0, 1, 2, … in file order, so any other order means bytes were copied or moved.
    The first frame with a number is kept; a later one with the same number is not read (when its
    descriptor is identical its records are exactly those already read, otherwise they are lost).
    Out-of-order frames are kept and read in sequence order, which is the order they were written in.
    """
    seen: dict[int, FrameInfo] = {}
    damage: list[Damage] = []
    highest = -1
    for f in frames:
        first = seen.get(f.seq)
        if first is not None:
            if same_descriptor(first, f):
                damage.append(Damage(path, f.offset, f.seq, f"repeats frame {f.seq} at offset {first.offset}; "
                                                            "its records are read once"))
            else:
                damage.append(Damage(path, f.offset, f.seq, f"repeats the number of frame {f.seq} at offset "
                                                            f"{first.offset} with other content; not read",
                                     f.records))
            continue
        if f.seq < highest:
            damage.append(Damage(path, f.offset, f.seq, f"out of order (after frame {highest}); "
                                                        "read in sequence order"))
        highest = max(highest, f.seq)
        seen[f.seq] = f
    if not damage:
        return frames, damage
    return sorted(seen.values(), key=attrgetter("seq")), damage


def same_descriptor(a: FrameInfo, b: FrameInfo) -> bool:
    return replace(a, offset=b.offset) == b


def open_segment(path: Path | str) -> SegmentFile:
    """Open a segment and load its index; raises SegmentFormatError when it is not a segment at all."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as fh:
        head = fh.read(SKIP_HEAD.size)
        if len(head) < SKIP_HEAD.size:
            if not head:
                raise TruncatedHeaderError("empty (0 bytes): cut before its header was written; nothing recorded "
                                           "in it")
            if SKIP_HEAD.pack(SKIPPABLE_MAGIC_HEADER, 0).startswith(head[:4]):
                raise TruncatedHeaderError("truncated inside the header: nothing recorded in it is readable")
            raise SegmentFormatError("not an ime-recorder segment (file too short)")
        magic, header_len = SKIP_HEAD.unpack(head)
        if magic != SKIPPABLE_MAGIC_HEADER:
            if magic == ZSTD_FRAME_MAGIC or SKIPPABLE_MAGIC_MIN <= magic <= SKIPPABLE_MAGIC_MAX:
                raise SegmentFormatError("a zstd file, but not an ime-recorder segment (no IMEH header)")
            raise SegmentFormatError("not an ime-recorder segment (not even a zstd file)")
        if header_len > MAX_HEADER_BYTES:
            raise SegmentFormatError("not an ime-recorder segment (header size out of range)")
        content = fh.read(header_len)
        if len(content) < header_len:
            raise TruncatedHeaderError("truncated inside the header: nothing recorded in it is readable")
        header = decode_header_content(content)

        sealed_damage: list[Damage] = []
        sealed = False
        if not path.name.endswith(OPEN_SUFFIX):
            try:
                index, _, _ = read_seal(fh, size)
                frames, order_damage = order_frames(list(index.frames), path)
                return SegmentFile(path, header, frames, True, size, seal=index.seal, damage=order_damage)
            except SegmentFormatError as exc:
                if path.name.endswith(SEALED_SUFFIX):
                    sealed_damage.append(Damage(path, size, None, f"not sealed properly ({exc}): cut or damaged, "
                                                                  "read by walking its frames; `ime-segments "
                                                                  "recover` re-seals it keeping every intact frame"))
        walked, damage, truncated = walk_frames(fh, path, size)
        frames, order_damage = order_frames(walked, path)
        return SegmentFile(path, header, frames, sealed, size, damage=sealed_damage + damage + order_damage,
                           truncated=truncated)


# --- many files -----------------------------------------------------------------------------------
# What a command line or recorder.open_recording names: files as given, directories searched, quoted globs where a
# command takes them. A path that does not exist, or names no segment file, is a usage error (one line); a file
# that does not open is skipped with one line saying why (callers warn and exit 1), never hiding the others.

def discover(paths: Iterable[Path | str], include_open: bool = True) -> list[Path]:
    """Expand directories (recursively, *.zst and *.zst.open) and keep files as given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and (child.name.endswith(SEALED_SUFFIX)
                                        or (include_open and child.name.endswith(OPEN_SUFFIX))) \
                        and MERGE_STAGING not in child.relative_to(p).parts:
                    found.append(child)
        else:
            found.append(p)
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)  # each file once, as first named
    return list(unique.values())


def input_files(paths: Iterable[str | Path], *, globs: bool = False, nothing: str = "") -> list[Path]:
    """The segment files `paths` name (`globs`: a path with *, ? or [ is a pattern); `nothing` is added to the error
    that says they name none."""
    given = [str(p) for p in paths]
    found: list[str] = []
    for p in given:
        if globs and any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise UserError(f"{p}: no file matches")
            found.extend(matches)
        elif not Path(p).exists():
            raise UserError(f"{p}: no such file or directory")
        else:
            found.append(p)
    files = discover(found)
    if not files:
        then = f"; {nothing}" if nothing else ""
        raise UserError(f"no segment files (*.zst, *.zst.open) in {', '.join(given)}{then}")
    return files


def open_files(files: Iterable[Path]) -> tuple[list[SegmentFile], list[str]]:
    """The segments that open, and one line ("PATH: why") for each file that does not."""
    segments: list[SegmentFile] = []
    unreadable: list[str] = []
    for f in files:
        try:
            segments.append(open_segment(f))
        except SegmentFormatError as exc:
            unreadable.append(f"{f}: {exc}")
    return segments, unreadable


def open_inputs(paths: Iterable[str | Path], *, globs: bool = False) -> tuple[list[SegmentFile], list[str]]:
    """`open_files` of `input_files(paths)`; a usage error, saying why the first one failed, when none opens."""
    segments, unreadable = open_files(input_files(paths, globs=globs))
    if not segments:
        raise UserError(unreadable[0])
    return segments, unreadable


def sequences(segments: list[SegmentFile]) -> list[list[SegmentFile]]:
    """Group files into time-ordered chains that do not overlap (a shard's consecutive files).

    Merging chains instead of every file at once keeps one decompressed frame per shard in memory,
    however many hourly files a month of recording produced.
    """
    chains: list[list[SegmentFile]] = []
    tails: dict[int, list[list[SegmentFile]]] = {}
    for seg in sorted(segments, key=lambda s: (s.shard, s.min_ts if s.min_ts is not None else s.start_ns,
                                                s.start_ns, str(s.path))):
        start = seg.min_ts if seg.min_ts is not None else seg.start_ns
        for chain in tails.get(seg.shard, []):
            last = chain[-1].max_ts
            if last is None or start >= last:
                chain.append(seg)
                break
        else:
            chain = [seg]
            chains.append(chain)
            tails.setdefault(seg.shard, []).append(chain)
    chains.sort(key=lambda c: (c[0].shard, c[0].start_ns))
    return chains


def merge_records(segments: list[SegmentFile], start_ns: int | None = None,
                  end_ns: int | None = None) -> Iterator[Record]:
    """All records of all files in receive-time order; equal times keep shard order, then file order. (A file
    with no record in the window costs nothing: its frame index says so.)"""
    streams = [(block for seg in chain for block in seg.record_blocks(start_ns, end_ns))
               for chain in sequences(segments)]
    for batch in streams[0] if len(streams) == 1 else merged(streams):
        yield from batch


def events_before(segments: list[SegmentFile], start_ns: int) -> Iterator[Record]:
    """The event records before `start_ns`, in receive-time order, reading only the frames that hold events.

    What a window (`--from`) needs to know of the connections opened before it: a day's recording has a few
    hundred events in tens of thousands of frames. Damage in a frame that also holds records of the window is
    left to the window's own read to report, so that it is reported once.
    """
    for batch in merged([_events_before(chain, start_ns) for chain in sequences(segments)]):
        yield from batch


def _events_before(chain: list[SegmentFile], start_ns: int) -> Iterator[list[Record]]:
    for seg in chain:
        frames = [f for f in seg.frames if f.events and f.min_ts < start_ns]
        for rows in seg.read_frames(frames, report=lambda info: info.max_ts < start_ns):
            yield as_records([r for r in rows if r[2] == RecordKind.EVENT and r[0] < start_ns], seg.shard)
