"""`ime-segments` and `ime-replay` on awkward input (issue 13, items 10 and 11): real files, real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from segment_util import ime_payload, write_records

from recorder.events import Event, encode_event

S = 1_000_000_000
# 2026-11-24T05:30:00Z = 09:00 in Tehran (UTC+03:30, no daylight saving since 2022).
T0 = 1_763_962_200 * S


def run(*args: str, module: str = "recorder.segment", env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "IME_TZ"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """One shard, 1001/1002, one record every 100 ms for 10 minutes from T0 (09:00–09:10 Tehran)."""
    d = tmp_path / "data"
    recs = [(T0, 1, 3, encode_event(Event.OPENED, conn=1, url="ws://x", contracts=["1001", "1002"]))]
    for i in range(6000):
        recs.append((T0 + i * 100_000_000 + 1, 1, 1, ime_payload(i, "1001" if i % 2 == 0 else "1002")))
    write_records(d, recs, shard=0, frame_bytes=16384, meta={"contracts": ["1001", "1002"], "endpoint": "id"})
    return d


def cut_inside_header(directory: Path) -> Path:
    bad = directory / "ime-s01-20261124T053000.000Z.zst"
    bad.write_bytes(b"\x50\x2a\x4d\x18\x40\x00\x00\x00IMEH")
    return bad


# --- item 11: one unreadable file does not hide the others ------------------------------------

@pytest.mark.parametrize("command", ["ls", "cat", "stats"])
def test_a_file_cut_inside_its_header_is_skipped_with_a_warning(recording, command):
    bad = cut_inside_header(recording)
    out = run(command, str(recording))
    assert out.returncode == 1, out.stderr
    assert f"warning: skipped {bad}: truncated inside the header" in out.stderr
    assert "Traceback" not in out.stderr
    if command == "ls":
        assert "6001" in out.stdout
    elif command == "cat":
        assert len(out.stdout.splitlines()) == 6001
    else:
        assert out.stdout.startswith("6001 records")


def test_only_unreadable_files_is_still_a_usage_error(tmp_path):
    bad = cut_inside_header(tmp_path)
    out = run("ls", str(bad))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "truncated inside the header" in out.stderr
