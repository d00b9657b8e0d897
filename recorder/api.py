"""The Python API for analysis: `recorder.open_recording(paths)`.

    >>> rec = open_recording("data/")                                     # doctest: +SKIP
    >>> for m in rec.messages(contracts=["1001"], start="2026-05-29T09:00:00Z"):   # doctest: +SKIP
    ...     print(m.recv_ns, m.server_ns, m.sections.best_limit.level(1).buy_price)
    >>> rec.to_polars("best_limit")                                       # doctest: +SKIP

`messages()` needs nothing beyond the recorder; `to_arrow()` needs pyarrow and `to_polars()` / `to_pandas()`
polars / pandas (`pip install 'ime-recorder[analysis]'`). docs/API.md has runnable examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.feed.message import Envelope, MarketData, MessageError, parse_envelope
from recorder.model.record import RecordKind
from recorder.segment.reader import SegmentFile, merge_records, open_inputs
from recorder.timeparse import parse_time

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow

TimeLike = int | str | datetime | None


@dataclass(frozen=True, slots=True)
class Message:
    """One market-data message as received: times in epoch ns, the contract, its sections, the exact bytes."""

    recv_ns: int
    server_ns: int | None
    identifier: str | None
    identifier_field: str | None  # "contractId" or "contractName": which endpoint it came from
    shard: int
    conn: int
    sections: MarketData
    raw: bytes
    envelope: Envelope


def _ns(value: TimeLike) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_time(value)
    raise TypeError(f"a time is epoch ns (int), ISO-8601 text or a datetime, not {type(value).__name__}")


class Recording:
    """Segment files opened by their index; nothing is decompressed until it is asked for."""

    def __init__(self, segments: list[SegmentFile], unreadable: list[str] | None = None) -> None:
        self.segments = segments
        self.unreadable = unreadable or []  # "PATH: why" for each file that did not open (skipped)
        self.skipped_unparsed = 0  # messages() skips frames that are not IME envelopes; this counts them

    def messages(self, contracts: Iterable[str] | None = None, start: TimeLike = None,
                 end: TimeLike = None) -> Iterator[Message]:
        """Parsed messages in receive-time order across shards, received in [start, end).

        Frames that do not parse (see `skipped_unparsed`), binary frames, connection events and redundant
        copies (receipts) are not messages; `to_arrow("messages")` / `to_arrow("events")` have those.
        """
        wanted = frozenset(contracts) if contracts else frozenset()
        text = RecordKind.TEXT
        for rec in merge_records(self.segments, _ns(start), _ns(end)):
            if rec.kind != text:
                continue
            try:
                env = parse_envelope(rec.payload)
                server_ns = env.timestamp_ns
            except MessageError:
                self.skipped_unparsed += 1
                continue
            if wanted and env.identifier not in wanted:
                continue
            yield Message(rec.ts_ns, server_ns, env.identifier, env.identifier_field, rec.shard, rec.conn,
                          env.data, rec.payload, env)

    def to_arrow(self, table: str, contracts: Iterable[str] | None = None, start: TimeLike = None,
                 end: TimeLike = None) -> pyarrow.Table:
        """One exported table (same schema as `ime-segments export`), in memory, sorted by receive time."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from recorder.export.flatten import Flattener
        from recorder.export.run import NO_LOWER, NO_UPPER, segment_blocks
        from recorder.export.schema import SCHEMAS

        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; choose from {', '.join(SCHEMAS)}")
        lo, hi = _ns(start), _ns(end)
        lo = NO_LOWER if lo is None else lo
        hi = NO_UPPER if hi is None else hi
        flattener = Flattener(contracts or (), tables=(table,))
        parts: list[pa.Table] = []
        for seg in self.segments:
            for first, block in segment_blocks(seg, lo, hi, seg.damage):
                flattener.add_block(block, seg.shard, seg.path.name, first, lo, hi)
            part = flattener.take().get(table)
            if part is not None:
                parts.append(part)
        if not parts:
            return SCHEMAS[table].empty_table()
        # Dictionaries differ per part; unify them so the result is one clean table.
        result = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
        return result.take(pc.sort_indices(result, [("recv_time", "ascending"), ("shard", "ascending"),
                                                    ("record", "ascending")]))

    def to_polars(self, table: str, **selection: Any) -> polars.DataFrame:
        try:
            import polars as pl
        except ImportError:
            raise ImportError("to_polars needs polars: pip install 'ime-recorder[analysis]'") from None
        return pl.from_arrow(self.to_arrow(table, **selection))  # type: ignore[return-value]

    def to_pandas(self, table: str, **selection: Any) -> pandas.DataFrame:
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install 'ime-recorder[analysis]'") from None
        return self.to_arrow(table, **selection).to_pandas()


def open_recording(paths: str | Path | Iterable[str | Path]) -> Recording:
    """Open segment files and directories of them (recursively; open `.zst.open` files too).

    A file that does not open (cut inside its header, not a segment) is skipped with a warning and listed in
    `Recording.unreadable`; UserError when a path does not exist, names no segment file, or none opens."""
    segments, unreadable = open_inputs([paths] if isinstance(paths, str | Path) else paths)
    for problem in unreadable:
        warnings.warn(f"skipped {problem}", stacklevel=2)
    return Recording(segments, unreadable)
