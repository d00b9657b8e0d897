"""The output directory: hive partitions by Tehran trading date, atomic part files, and the manifest.

Layout: `OUT/<table>/trading_date=YYYY-MM-DD/<segment name>.parquet`, one file per table, date and source segment.
A part file is written as a hidden `.NAME.tmp` (row group by row group) and renamed when complete, so a
reader never sees half a file, and an interrupted export leaves only whole files behind (hidden
leftovers are removed by the next run). `OUT/_manifest.json` (ignored by Parquet readers: leading `_`)
lists the sealed segments already exported; it is replaced atomically after each segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recorder.export.schema import SCHEMAS

TEHRAN = ZoneInfo("Asia/Tehran")
MANIFEST = "_manifest.json"
# Not `date`: the Aggregate section has its own `date` field, and a partition key must not shadow a column.
PARTITION = "trading_date"
MANIFEST_VERSION = 1
DAY_NS = 86_400 * 1_000_000_000
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def _offset_ns(ts_ns: int) -> int:
    moment = datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=UTC).astimezone(TEHRAN)
    offset = moment.utcoffset()
    return int(offset.total_seconds()) * 1_000_000_000 if offset is not None else 0


def tehran_dates(recv: pa.Array) -> pa.Array:
    """Trading date (Asia/Tehran) of each receive time, as int32 days since 1970-01-01."""
    ns = pc.cast(recv, pa.int64())
    lo, hi = pc.min(ns).as_py(), pc.max(ns).as_py()
    off_lo, off_hi = _offset_ns(lo), _offset_ns(hi)
    if off_lo == off_hi:  # one offset for the whole batch (Iran has had no DST since 2022)
        # Integer division truncates; receive times are after 1970, so that is the floor.
        return pc.cast(pc.divide(pc.add(ns, off_lo), DAY_NS), pa.int32())
    days = [(v + _offset_ns(v)) // DAY_NS for v in ns.to_pylist()]
    return pa.array(days, pa.int32())


def date_text(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")


# Times and record indices rise steadily: delta encoding stores them in about a byte each, where dictionary or
# plain encoding would leave 8 nearly random bytes to zstd (it halves the dataset). Everything else repeats a
# lot (prices, quantities, contracts) and is dictionary-encoded, except free text and payloads.
_DELTA = ("recv_time", "server_time", "record")
_PLAIN = ("payload", "json", "value", "field")


def encodings(table: str) -> dict[str, Any]:
    names = SCHEMAS[table].names
    return {
        "use_dictionary": [n for n in names if n not in _DELTA and n not in _PLAIN],
        "column_encoding": {n: "DELTA_BINARY_PACKED" for n in names if n in _DELTA},
    }


@dataclass(slots=True)
class PartWriter:
    """All part files of one source segment: one ParquetWriter per (table, date), renamed on `commit`."""

    out: Path
    name: str
    row_group_rows: int
    writers: dict[tuple[str, int], tuple[pq.ParquetWriter, Path, Path]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def write(self, table: str, data: pa.Table) -> None:
        days = tehran_dates(data.column("recv_time").combine_chunks())
        unique = pc.unique(days).to_pylist()
        for day in unique:
            part = data if len(unique) == 1 else data.filter(pc.equal(days, day))
            key = (table, day)
            entry = self.writers.get(key)
            if entry is None:
                directory = self.out / table / f"{PARTITION}={date_text(day)}"
                directory.mkdir(parents=True, exist_ok=True)
                final = directory / f"{self.name}.parquet"
                tmp = directory / f"{TMP_PREFIX}{self.name}.parquet{TMP_SUFFIX}"
                writer = pq.ParquetWriter(tmp, SCHEMAS[table], compression="zstd", write_statistics=True,
                                          **encodings(table))
                entry = self.writers[key] = (writer, tmp, final)
            entry[0].write_table(part, row_group_size=self.row_group_rows)
            self.rows[table] = self.rows.get(table, 0) + part.num_rows

    def commit(self) -> list[str]:
        """Close and rename every part file; returns their paths relative to the output directory."""
        done = []
        for writer, tmp, final in self.writers.values():
            writer.close()
            os.replace(tmp, final)
            done.append(str(final.relative_to(self.out)))
        self.writers.clear()
        return sorted(done)

    def abort(self) -> None:
        for writer, tmp, _ in self.writers.values():
            try:
                writer.close()
            finally:
                tmp.unlink(missing_ok=True)
        self.writers.clear()


def remove_leftovers(out: Path) -> int:
    """Hidden temporary part files of an export that was interrupted; they are never complete."""
    count = 0
    for tmp in out.glob(f"*/{PARTITION}=*/{TMP_PREFIX}*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def load_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def save_manifest(out: Path, doc: dict[str, Any]) -> None:
    path = out / MANIFEST
    tmp = out / f"{MANIFEST}.tmp"
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)
