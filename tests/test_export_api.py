"""recorder.open_recording agrees with the export (docs/API.md's examples run in tests/test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_util import raw_records, write_recording

import recorder
from recorder.errors import UserError
from recorder.feed.message import MessageError, parse_envelope


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("api")
    write_recording(work / "demo-data", per_shard=300)
    return work


def test_messages_are_every_parsed_text_frame_in_receive_order(workdir: Path) -> None:
    rec = recorder.open_recording(workdir / "demo-data")
    got = [(m.recv_ns, m.raw) for m in rec.messages()]
    expected = []
    for _, _, _, ts, kind, payload in raw_records(workdir / "demo-data"):
        if kind != 1:
            continue
        try:
            parse_envelope(payload).timestamp_ns  # noqa: B018
        except MessageError:
            continue
        expected.append((ts, payload))
    assert sorted(got, key=lambda x: x[0]) == got
    assert sorted(got) == sorted(expected)
    assert rec.skipped_unparsed == 4 * 4  # four files, four unparseable text frames each (receipts not counted)
    book = rec.to_arrow("best_limit")
    assert book.num_rows == sum(1 for m in rec.messages() if m.sections.best_limit is not None)


def test_open_recording_refuses_what_is_not_a_recording(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        recorder.open_recording(tmp_path / "missing")
    (tmp_path / "x.zst").write_bytes(b"not a segment")
    with pytest.raises(UserError, match="not an ime-recorder segment"):
        recorder.open_recording(tmp_path)
    rec = recorder.open_recording(__import__("export_util").write_recording(tmp_path / "r", per_shard=20)[0])
    with pytest.raises(ValueError, match="unknown table"):
        rec.to_arrow("nope")
    with pytest.raises(TypeError, match="a time is"):
        list(rec.messages(start=1.5))  # type: ignore[arg-type]


def test_one_unreadable_file_is_skipped_with_a_warning_not_the_recording(tmp_path: Path) -> None:
    """As every command does: a file that does not open (cut inside its header) costs that file only."""
    directory = tmp_path / "r"
    write_recording(directory, per_shard=20)
    good = len(list(recorder.open_recording(directory).messages()))
    bad = directory / "ime-s09-20260101T000000.000Z.zst"
    bad.write_bytes(b"")
    with pytest.warns(UserWarning, match=f"skipped {bad}: empty"):
        rec = recorder.open_recording(directory)
    assert rec.unreadable == [f"{bad}: empty (0 bytes): cut before its header was written; nothing recorded in it"]
    assert len(list(rec.messages())) == good > 0
