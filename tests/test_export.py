"""`ime-segments export` end to end: a multi-shard simulator recording (both endpoints, odd frames, events,
receipts) written with the real SegmentWriter, exported by the real command, read back with pyarrow, DuckDB
and polars, and compared with the raw frames."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from export_util import EXE, export, raw_records, sim_frames, write_recording

from recorder import native
from recorder.export.flatten import NATIVE
from recorder.export.schema import INT_COLUMNS, SCHEMAS, SECTION_TABLES, STR_COLUMNS
from recorder.feed.message import MessageError, parse_envelope, parse_timestamp_ns
from recorder.model.record import RecordKind
from recorder.segment.writer import SegmentWriter

ANALYSIS_MD = Path(__file__).resolve().parent.parent / "docs" / "analysis.md"
INT64_MAX = (1 << 63) - 1


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rec")
    write_recording(d)
    return d


@pytest.fixture(scope="module")
def exported(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("work")
    result = export(str(recording), "--out", "export", cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "export"


def read(out: Path, table: str) -> pa.Table:
    if not (out / table).exists():
        return SCHEMAS[table].empty_table()
    return ds.dataset(out / table, format="parquet", partitioning="hive").to_table()


def keys(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table.column("segment").to_pylist(), table.column("record").to_pylist(), strict=True))


def ns(table: pa.Table, column: str) -> list[int | None]:
    return table.column(column).cast(pa.int64()).to_pylist()


def test_every_text_frame_lands_in_exactly_one_row_set(recording: Path, exported: Path) -> None:
    raw = raw_records(recording)
    by_kind: dict[int, set[tuple[str, int]]] = {}
    for seg, idx, _, _, kind, _ in raw:
        by_kind.setdefault(kind, set()).add((seg, idx))
    parsed: set[tuple[str, int]] = set()
    for t in SECTION_TABLES:
        k = keys(read(exported, t))
        assert len(k) == len(set(k)), f"a frame has two rows in {t}"
        parsed |= set(k)
    messages = read(exported, "messages")
    kinds = messages.column("kind").to_pylist()
    text_msgs = {k for k, kind in zip(keys(messages), kinds, strict=True) if kind == "text"}
    assert len(text_msgs) == sum(1 for kind in kinds if kind == "text")
    assert not parsed & text_msgs
    assert parsed | text_msgs == by_kind[1]
    assert {k for k, kind in zip(keys(messages), kinds, strict=True) if kind == "binary"} == by_kind[2]
    assert set(keys(read(exported, "events"))) == by_kind[3]
    assert by_kind[4], "the recording has receipts"
    exported_keys = parsed | set(keys(messages)) | set(keys(read(exported, "events")))
    assert not exported_keys & by_kind[4], "a receipt (redundant copy) was exported"
    # Binary payloads are kept byte for byte.
    payload_of = {(seg, idx): p for seg, idx, _, _, _, p in raw}
    for k, p in zip(keys(messages), messages.column("payload").to_pylist(), strict=True):
        assert payload_of[k] == p


def expected_row(table: str, obj: dict) -> dict:
    """The typed values a section should give: the JSON value when it is an int64 (or a string column)."""
    out = {}
    for name, path in STR_COLUMNS.get(table, []) + INT_COLUMNS[table]:
        value = obj["data"]
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if name in dict(STR_COLUMNS.get(table, [])):
            out[name] = value
        else:
            out[name] = value if type(value) is int and -INT64_MAX - 1 <= value <= INT64_MAX else None
    return out


def test_values_equal_the_json(recording: Path, exported: Path) -> None:
    raw = {(seg, idx): (shard, ts, p) for seg, idx, shard, ts, kind, p in raw_records(recording) if kind == 1}
    checked = Counter()
    for t in SECTION_TABLES:
        table = read(exported, t)
        names = [n for n, _ in STR_COLUMNS.get(t, []) + INT_COLUMNS[t]]
        rows = table.select(names).to_pylist()
        for k, row, recv, server, contract, field, shard in zip(
                keys(table), rows, ns(table, "recv_time"), ns(table, "server_time"),
                table.column("contract").to_pylist(), table.column("identifier_field").to_pylist(),
                table.column("shard").to_pylist(), strict=True):
            rshard, rts, payload = raw[k]
            obj = json.loads(payload)  # exact integers, independent of orjson
            assert row == expected_row(t, obj)
            assert (recv, shard) == (rts, rshard)
            assert server == parse_timestamp_ns(obj["timestamp"])
            assert contract == (obj.get("contractId") or obj.get("contractName"))
            assert field == ("contractId" if obj.get("contractId") else "contractName")
            checked[t] += 1
    assert min(checked.values()) > 700
    # Both endpoints' recordings share the schema; the name endpoint's Persian names come through.
    bl = read(exported, "best_limit")
    assert set(bl.column("identifier_field").to_pylist()) == {"contractId", "contractName"}
    assert "سکه-آزادی 1404/08" in set(bl.column("contract").to_pylist())


def test_odd_frames_are_reported_not_cast(exported: Path) -> None:
    extras = read(exported, "extras").to_pylist()
    found = {(e["contract"], e["section"], e["field"], e["reason"], e["value"]) for e in extras}
    assert ("9002", "AllowedPriceRange", "minAllowedPrice", "not_integer", "1.5") in found
    assert ("9002", "AllowedPriceRange", "maxAllowedPrice", "out_of_int64_range",
            "123456789012345678901234567890") in found
    assert ("سکه 1404", "data", "Foo", "unknown_section", '{"a":1}') in found
    assert ("سکه 1404", "envelope", "v", "unknown_field", "2") in found
    rng = read(exported, "allowed_price_range").to_pylist()
    odd = [r for r in rng if r["contract"] == "9002"]
    assert odd and all(r["min_allowed_price"] is None and r["max_allowed_price"] is None for r in odd)
    # +03:30 offsets are applied to the server time.
    assert odd[0]["server_time"] == datetime(2026, 5, 29, 16, 59, 1, tzinfo=UTC)
    reasons = Counter(m["reason"].split(":")[0] for m in read(exported, "messages").to_pylist())
    assert reasons["not valid JSON"] == 4  # one per file
    assert reasons["message is an array, not a JSON object"] == 4
    assert reasons["timestamp 'not a time' is not ISO-8601"] == 4
    assert reasons["no known section (unknown"] == 4
    assert reasons["data.BestLimit.1.buy_price is a string, not a number"] == 4
    assert reasons["binary frame"] == 4


def test_partitions_are_tehran_trading_dates(exported: Path) -> None:
    tehran = ZoneInfo("Asia/Tehran")
    table = read(exported, "best_limit")
    dates = {str(d) for d in table.column("trading_date").to_pylist()}
    assert dates == {"2026-05-29", "2026-05-30"}, "the recording crosses midnight in Tehran"
    for recv, date in zip(ns(table, "recv_time"), table.column("trading_date").to_pylist(), strict=True):
        assert datetime.fromtimestamp(recv / 1e9, tz=tehran).strftime("%Y-%m-%d") == str(date)


def guide_block(language: str) -> str:
    text = ANALYSIS_MD.read_text()
    section = text[text.index("## Export"):]
    section = section[:section.index("\n## ", 10)]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    return next(b for b in blocks if "best_limit" in b)


def test_guide_duckdb_and_polars_queries(recording: Path, exported: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    # Expected from the raw frames: spread and mid of level 1 per receive-time minute for contract 1001.
    sums: dict[int, list[float]] = {}
    for _, _, _, ts, kind, payload in raw_records(recording):
        if kind != 1:
            continue
        try:
            env = parse_envelope(payload)
        except MessageError:
            continue
        if env.identifier != "1001" or env.data.best_limit is None:
            continue
        level = env.data.best_limit.level(1)
        acc = sums.setdefault(ts // 60_000_000_000 * 60, [0.0, 0.0, 0])
        acc[0] += level.sell_price - level.buy_price
        acc[1] += (level.sell_price + level.buy_price) / 2
        acc[2] += 1
    expected = [(minute, s / n, m / n, n) for minute, (s, m, n) in sorted(sums.items())]
    assert len(expected) == 2 and all(n > 10 for *_, n in expected)

    cwd = os.getcwd()
    os.chdir(exported.parent)  # the guide's queries use the relative path `export/`
    try:
        rows = duckdb.sql(guide_block("sql")).fetchall()
        scope: dict[str, object] = {}
        exec(guide_block("python"), scope)
        frame = scope["per_minute"]
    finally:
        os.chdir(cwd)
    got = [(int(r[0].timestamp()), r[1], r[2], r[3]) for r in rows]
    polars_rows = [(int(r["minute"].timestamp()), r["spread"], r["mid"], r["updates"])
                   for r in frame.to_dicts()]  # type: ignore[attr-defined]
    for result in (got, polars_rows):
        assert [(m, n) for m, _, _, n in result] == [(m, n) for m, _, _, n in expected]
        for (_, spread, mid, _), (_, es, em, _) in zip(result, expected, strict=True):
            assert spread == pytest.approx(es, rel=1e-12)
            assert mid == pytest.approx(em, rel=1e-12)
    assert isinstance(pl.DataFrame, type)


def test_incremental_export_converts_only_new_sealed_segments(tmp_path: Path) -> None:
    rec, out = tmp_path / "rec", tmp_path / "out"
    write_recording(rec, per_shard=200)
    first = export(str(rec), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "exported 4 segments" in first.stdout
    # The summary says which parser ran.
    assert ("parser: C scanner for 400 of 408" if NATIVE else "parser: Python for all 408") in first.stdout
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    assert len(manifest["segments"]) == 4
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}

    # The recording grows: one more sealed file and one still open (being recorded).
    writer = SegmentWriter(rec, shard=0, frame_bytes=16_384)
    for ts, payload in sim_frames(100, start_ns=1_780_100_000 * 10**9):
        writer.append(ts, 7, 1, payload)
    writer.close()
    still_open = SegmentWriter(rec, shard=1)
    still_open.append(1_780_200_000 * 10**9, 7, 1, sim_frames(1)[0][1])
    still_open.flush()
    try:
        second = export(str(rec), "--out", str(out))
    finally:
        still_open.close()
    assert second.returncode == 0, second.stderr
    assert "exported 1 segments, 100 records" in second.stdout
    assert "4 already exported" in second.stdout and "1 open" in second.stdout
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was rewritten"
    assert read(out, "best_limit").num_rows == 2 * 200 + 100

    third = export(str(rec), "--out", str(out))  # the open file is sealed now
    assert "exported 1 segments, 1 records" in third.stdout
    assert read(out, "best_limit").num_rows == 2 * 200 + 101

    other = export(str(rec), "--out", str(out), "--contract", "1001")
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "other options" in other.stderr and "Traceback" not in other.stderr


def test_interrupted_export_leaves_a_readable_dataset(tmp_path: Path) -> None:
    rec, out, clean = tmp_path / "rec", tmp_path / "out", tmp_path / "clean"
    for k in range(6):
        writer = SegmentWriter(rec, shard=k, frame_bytes=65_536)
        for ts, payload in sim_frames(6000, seed=k, step_ns=1_000_000):
            writer.append(ts, 1, 1, payload)
        writer.close()
    proc = subprocess.Popen([EXE, "export", str(rec), "--out", str(out), "-q"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "_manifest.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for t in SECTION_TABLES:  # whatever was finished is readable; nothing half-written is visible
        if (out / t).exists():
            read(out, t)
    again = export(str(rec), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert export(str(rec), "--out", str(clean), "-q").returncode == 0
    assert not list(out.rglob("*.tmp"))
    for t in SECTION_TABLES:
        got, want = read(out, t), read(clean, t)
        assert got.num_rows == want.num_rows == 36_000
        assert len(set(keys(got))) == got.num_rows


def test_from_to_and_contract_select_rows(recording: Path, tmp_path: Path) -> None:
    raw = [(ts, p) for _, _, _, ts, kind, p in raw_records(recording) if kind == 1]
    lo, hi = raw[100][0], raw[300][0]
    out = tmp_path / "slice"
    result = export(str(recording), "--out", str(out), "--contract", "1001", "--contract", "GOLD-APR",
                    "--from", str(lo), "--to", str(hi), "--tables", "best_limit,aggregate")
    assert result.returncode == 0, result.stderr
    expected = 0
    for ts, p in raw:
        try:
            env = parse_envelope(p)
        except MessageError:
            continue
        if lo <= ts < hi and env.identifier in ("1001", "GOLD-APR") and env.data.best_limit is not None:
            expected += 1
    bl = read(out, "best_limit")
    assert bl.num_rows == expected > 10
    assert set(bl.column("contract").to_pylist()) == {"1001", "GOLD-APR"}
    assert all(lo <= v < hi for v in ns(bl, "recv_time"))
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "aggregate", "best_limit"]


@pytest.mark.parametrize(("args", "message"), [
    (["/nonexistent/x", "--out", "{out}"], "no such file or directory"),
    (["{rec}", "--out", "{out}", "--tables", "best_limit,nope"], "unknown table nope"),
    (["{rec}", "--out", "{out}", "--from", "yesterday"], "cannot read time"),
    (["{rec}", "--out", "{out}", "--from", "2026-05-30T00:00:00Z", "--to", "2026-05-29T00:00:00Z"],
     "is not before --to"),
    (["{rec}", "--out", "{file}"], "is a file"),
])
def test_bad_input_is_one_line_and_exit_2(recording: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "f").write_text("x")
    argv = [a.format(rec=recording, out=tmp_path / "o", file=tmp_path / "f") for a in args]
    result = export(*argv)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ime-segments: error:")


def test_simulator_frames_take_the_fast_path(exported: Path) -> None:
    """The fast path must accept the documented shape (else the export is correct but several times slower)."""
    manifest = orjson.loads((exported / "_manifest.json").read_bytes())
    counts = Counter()
    for entry in manifest["segments"].values():
        counts.update(entry["counts"])
    assert counts["parsed"] == 4 * 200 + 4 * 2  # simulator frames + the two odd ones per file that parse
    assert counts["parsed_fast"] == 4 * 200
    assert counts["parsed_c"] == (4 * 200 if NATIVE else 0)  # with the C scanner built, it takes them all


def test_ime_native_0_runs_the_python_paths_to_the_same_dataset(recording: Path, exported: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """IME_NATIVE=0 selects the Python paths even where the C scanner is built; the summary says so, and
    the dataset is the same, table for table and row for row."""
    monkeypatch.setenv(native.ENV, "0")
    result = export(str(recording), "--out", str(tmp_path / "py"))
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "py" / "_manifest.json").read_bytes())
    counts: Counter[str] = Counter()
    for entry in manifest["segments"].values():
        counts.update(entry["counts"])
    assert counts["parsed"] == 2 * 400 + 4 * 2 and not counts["parsed_c"]
    why = "IME_NATIVE=0 is set" if native.built("scan") else "the C kernel recorder.export._scan is not built"
    assert f"parser: Python for all {counts['parsed']} parsed frames ({why}" in result.stdout
    for table in SCHEMAS:
        def rows(out: Path, table: str = table) -> list[str]:
            return sorted(map(str, read(out, table).to_pylist()))
        assert rows(tmp_path / "py") == rows(exported), table


def test_progress_bar_on_a_terminal_only(recording: Path, tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([EXE, "export", str(recording), "--out", str(tmp_path / "tty")],
                              stdout=subprocess.PIPE, stderr=follower, timeout=120)
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert b"exporting" in seen  # the bar, on the terminal
    piped = export(str(recording), "--out", str(tmp_path / "pipe"))
    assert "exporting" not in piped.stderr and piped.stderr == ""  # never in a pipe or a log


def test_damaged_frame_is_reported_and_the_rest_exported(tmp_path: Path) -> None:
    from recorder.segment.reader import open_segment

    writer = SegmentWriter(tmp_path / "rec", frame_bytes=8192)
    frames = sim_frames(600)
    for ts, payload in frames:
        writer.append(ts, 1, 1, payload)
    (sealed,) = writer.close()
    seg = open_segment(sealed.path)
    victim = seg.frames[2]
    data = bytearray(sealed.path.read_bytes())
    data[victim.data_offset + victim.compressed_size // 2] ^= 0xFF
    sealed.path.write_bytes(bytes(data))
    result = export(str(tmp_path / "rec"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "warning" in result.stderr and "checksum" in result.stderr and "Traceback" not in result.stderr
    assert read(tmp_path / "out", "best_limit").num_rows == 600 - victim.records
    assert f"records_damaged={victim.records}" in result.stdout


def test_segment_and_record_identify_one_stored_record_with_receipt_columns(recording: Path, exported: Path) -> None:
    """A redundant recording's receipts are stored as one receipt-columns record per block: numbering records as
    readers expand them gave the same (segment, record) to several frames (issue 21: 46,318 rows, 35,298 distinct
    pairs). Numbers follow the stored order, so each pair is one record and below the file's record count."""
    from recorder.segment.reader import discover, open_segment

    counts = {p.name: open_segment(p).records for p in discover([recording])}
    stored = {(seg, idx): (ts, p) for seg, idx, _, ts, _, p in raw_records(recording)}
    assert any(kind == RecordKind.RECEIPT_COLUMNS for *_, kind, _ in raw_records(recording))
    for t in (*SECTION_TABLES, "messages", "events"):
        table = read(exported, t)
        k = keys(table)
        assert len(k) == len(set(k)), f"a (segment, record) pair names two frames in {t}"
        for (seg, idx), recv in zip(k, ns(table, "recv_time"), strict=True):
            assert 0 <= idx < counts[seg]
            assert stored[(seg, idx)][0] == recv
