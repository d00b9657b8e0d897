"""Metrics, status lines and the exit summary tell the truth about restarts and bytes on disk.

A worker is SIGKILLed mid-recording: the restart must show in `ime_recorder_restarts_total`, in the periodic
status line and in the exit summary, for that shard only. `ime_recorder_disk_bytes_total` and the summary's bytes
are checked against the sizes of the files actually on disk, so a counter stuck at 0 (or counting something
else) fails here.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from record_util import RecorderProcess

from recorder.humanize import human_bytes
from recorder.segment.reader import open_segment

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[str, dict[int, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, dict[int, float]] = {}
    for m in re.finditer(r'^(ime_recorder_\w+)\{shard="(\d+)"\} (\S+)$', text, re.MULTILINE):
        out.setdefault(m[1], {})[int(m[2])] = float(m[3])
    return out


def shard_of(path: Path) -> int:
    return int(re.search(r"-s(\d+)-", path.name)[1])  # type: ignore[index]


def disk_by_shard(out: Path) -> dict[int, int]:
    """Bytes of every segment file (sealed, open, and any moved-away tail) per shard, as the OS sees them."""
    sizes: dict[int, int] = {}
    for p in out.rglob("ime-s*.zst*"):
        try:
            size = p.stat().st_size
        except FileNotFoundError:  # renamed from .open to .zst between glob and stat
            continue
        sizes[shard_of(p)] = sizes.get(shard_of(p), 0) + size
    return sizes


def poll(condition, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def test_a_restart_and_the_bytes_on_disk_show_in_metrics_status_and_summary(sim_process, tmp_path):
    sim = sim_process("--contracts", "8", "--rate", "800")
    out = tmp_path / "out"
    rec = RecorderProcess(tmp_path, "--ids", ",".join(sim.info["ids"]), "--shards", "2", "--out", str(out),
                          "--metrics-port", "0", "--status-interval", "1", "--flush-ms", "100",
                          "--base-url", sim.info["base_url"], "--token-url", sim.info["token_url"],
                          env={"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]}).start()
    try:
        rec.wait_for("Prometheus metrics on http://127.0.0.1:")
        port = int(rec.stderr.split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
        poll(lambda: scrape(port).get("ime_recorder_connections_open", {}) == {0: 1.0, 1: 1.0}, what="both open")
        assert scrape(port)["ime_recorder_restarts_total"] == {0: 0.0, 1: 0.0}
        time.sleep(1)  # let the victim write a frame or two first

        (victim, *_) = rec.worker_pids()
        os.kill(victim, signal.SIGKILL)
        rec.wait_for("restarting in")
        killed = int(re.search(rf"shard (\d+) worker \(pid {victim}\)", rec.stderr)[1])  # type: ignore[index]
        other = 1 - killed
        log_at = len(rec.stderr)

        def restarted() -> bool:
            m = scrape(port)
            return m["ime_recorder_restarts_total"] == {killed: 1.0, other: 0.0} and \
                m["ime_recorder_connections_open"] == {0: 1.0, 1: 1.0}

        poll(restarted, what="the restart in ime_recorder_restarts_total and the shard connected again")
        poll(lambda: "1 restarts" in "".join(line for line in rec.stderr[log_at:].splitlines()
                                            if "status: 2 shards" in line), what="a status line with the restart")

        # disk_bytes_total counts what the workers wrote: it catches up with the files' sizes (checked first,
        # so the figure must grow to them) and never exceeds them (checked after).
        before = disk_by_shard(out)
        poll(lambda: all(scrape(port)["ime_recorder_disk_bytes_total"][s] >= before[s] for s in (0, 1)),
             what=f"disk_bytes_total reaching the files' sizes {before}")
        reported = scrape(port)["ime_recorder_disk_bytes_total"]
        after = disk_by_shard(out)
        assert all(reported[s] <= after[s] for s in (0, 1)), (reported, after)

        rec.signal(signal.SIGTERM)
        assert rec.wait(30) == 0, rec.stderr
    finally:
        rec.kill_tree()

    summary = {int(m[1]): m for m in re.finditer(
        r"^  shard (\d+): .* records in \d+ sealed files \(([^)]+) written\), \d+ reconnects, (\d+) restarts",
        rec.stderr, re.MULTILINE)}
    assert (summary[killed][3], summary[other][3]) == ("1", "0"), rec.stderr
    final = disk_by_shard(out)
    # The shard that was never killed reported every byte it wrote, seals included: exactly the files' sizes.
    assert summary[other][2] == human_bytes(final[other]), (summary[other][0], final)
    # The killed incarnation's count is its last report (≤ 1 s old); recovery then appended an index. So the
    # restarted shard's figure lies between what its new incarnation wrote and everything on disk.
    by_incarnation: dict[int, int] = {}
    for p in out.rglob(f"ime-s{killed:02d}-*.zst"):
        incarnation = int((open_segment(p).header.meta.get("worker") or {}).get("incarnation", 0))
        by_incarnation[incarnation] = by_incarnation.get(incarnation, 0) + p.stat().st_size
    assert len(by_incarnation) == 2, by_incarnation
    new_files = by_incarnation[max(by_incarnation)]
    assert new_files > 0
    low, high = human_bytes(new_files), human_bytes(final[killed])
    assert to_bytes(low) < to_bytes(summary[killed][2]) <= to_bytes(high), (summary[killed][0], low, high)


def to_bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(B|KiB|MiB|GiB)", text)
    assert m, text
    return float(m[1]) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m[2]]
