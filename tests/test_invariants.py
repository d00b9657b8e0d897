"""The invariant matrix (tests/invariants.py): every recording mode × every reader, against the published log.

Each mode is recorded once per test session (`xdist_group` keeps a mode's tests on one worker), then every
reader's view of it is held to the same facts. A new feature that reopens a seam fails here in the cell where
the seam is.
"""

from __future__ import annotations

from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from invariants import MODES, READERS, Run, check_view, ls_totals, make_run, read_cat_raw, stats_counts
from nats_util import NATS_SERVER
from record_util import compare_with_sent_log

from recorder.feed.message import identifier_of
from recorder.model.record import RecordKind
from recorder.segment.layout import day_directory
from recorder.segment.reader import discover, open_segment

pytestmark = pytest.mark.slow

_RUNS: dict[str, Run] = {}


@pytest.fixture
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    name = request.node.callspec.params["mode"]
    if name not in _RUNS:
        _RUNS[name] = make_run(MODES[name], tmp_path_factory.mktemp(f"matrix-{name}"))
    return _RUNS[name]


def _grouped(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=pytest.mark.xdist_group(f"matrix-{n}")) for n in names]


MODE_PARAMS = _grouped(list(MODES))


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_every_reader_holds_the_published_messages(run: Run, mode: str, reader: str) -> None:
    if reader == "nats" and NATS_SERVER is None:
        pytest.skip("nats-server is not installed (.ci/run installs it)")
    reference = read_cat_raw(run).payloads
    figures = check_view(run, READERS[reader](run), reference, f"{mode}/{reader}")
    assert figures["interior"] > 500


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_counts_agree_across_stats_ls_and_the_readers(run: Run, mode: str) -> None:
    """stats counts each message once per contract; ls's index counts every stored record; both as cat reads."""
    reference = read_cat_raw(run).payloads
    per_contract = Counter(identifier_of(p) for p in reference)
    to_id = dict(zip(run.sim_info["names"], run.sim_info["ids"], strict=True))
    assert stats_counts(run) == {to_id.get(c, c): n for c, n in per_contract.items() if c is not None}
    stored = receipts = 0
    for path in discover([run.out]):
        seg = open_segment(path)
        stored += seg.records
        receipts += int(seg.seal.get("receipts", 0))
    totals = ls_totals(run)
    assert totals["records"] == stored and totals["copies"] == receipts
    assert totals["sealed"] == totals["files"], "every file is sealed when the recorder has stopped"


@pytest.mark.parametrize("mode", MODE_PARAMS)
def test_the_mode_happened_and_left_every_file_sealed(run: Run, mode: str) -> None:
    """Each mode's own edge really was in the recording (else the matrix would test nothing there)."""
    files = discover([run.out])
    assert not [p for p in run.out.rglob("*.open")], "a .open file was left"
    for path in files:
        assert open_segment(path).verify() == [], path
    stderr = run.recorder_stderr()
    records = [r for p in files for r in open_segment(p).iter_records()]
    events = Counter(decode_name(r.payload) for r in records if r.kind == RecordKind.EVENT)
    m = run.mode
    if m.name == "redundant":
        assert any(r.kind == RecordKind.RECEIPT for r in records), "no copy became a receipt"
        assert events["reconnect"] >= 2, events
    if m.kill_worker_at_s is not None:
        assert "was killed by signal 9" in stderr, stderr
        assert any(open_segment(p).seal.get("reason") == "recovered" for p in files), "nothing was recovered"
    if m.name == "rotated":
        assert len(files) >= 6, len(files)
    if m.midnight_at_s is not None:
        days = {p.parent.name for p in files}
        assert len(days) == 2, days
        tehran = ZoneInfo("Asia/Tehran")
        for path in files:
            times = [r.ts_ns for r in open_segment(path).iter_records()]
            assert all(day_directory(t, tehran) == path.parent.name for t in times), path
    texts = [r.payload for r in records if r.kind == RecordKind.TEXT]
    if m.by_name:
        assert all(b'"contractName":"' in p for p in texts if identifier_of(p) is not None)
    if m.name == "binary-oversized":
        sent = [r for p in discover([run.sent]) for r in open_segment(p).iter_records()]
        sent_binary = Counter(r.payload for r in sent if r.kind == RecordKind.BINARY)
        assert sent_binary and Counter(r.payload for r in records if r.kind == RecordKind.BINARY) == sent_binary
        oversized = sum(1 for r in sent if r.kind == RecordKind.TEXT and len(r.payload) > 20_000)
        assert oversized > 0 and events["oversized"] == oversized and events["malformed"] == 0, events
        assert any(identifier_of(p) is None for p in texts), "no malformed text frame recorded as received"
    if m.two_recorders:
        assert "from 2 inputs" in run.merge_stdout


def decode_name(payload: bytes) -> str:
    from recorder.events import decode_event

    return str(decode_event(payload).get("event"))


# Not with a killed worker (its last batch is lost, by design), two recorders (one sent log, two recordings), a
# shifted clock (connections are paired with the sent log's by opening time) or oversized frames (recorded as
# events, checked above).
@pytest.mark.parametrize("mode", _grouped(["plain", "redundant", "rotated", "by-name"]))
def test_every_connection_holds_what_the_simulator_sent_on_it(run: Run, mode: str) -> None:
    """Below the dedupe: each connection's arrivals (records and receipts) are the sent log's, in order."""
    checked = compare_with_sent_log(run.out, run.sent, partial=False)
    assert checked["connections"] >= 2 and checked["messages"] > 500
