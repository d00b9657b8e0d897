"""The invariant matrix: every recording mode, read by every reader, checked against what the market published.

A *mode* is one way of making a recording (one copy, redundant copies with drops, a SIGKILLed worker, rotation by
size, across Tehran midnight, by name, with binary and oversized frames, two recorders merged). Each mode is made
once per test session by real processes: `ime-sim` (with `--published-log`, the market's ground truth, and
`--sent-log`), `ime-record` with `--relay` and `--publish` to a real nats-server, and a relay client that stays
subscribed to every contract for the whole run.

A *reader* is one way a user gets the messages back: `ime-segments cat` (raw, jsonl, --all-copies), `stats`,
`ls`, `export` and its ids, `open_recording` (messages, to_arrow), `ime-replay` (stdout, --serve), `merge`, the
relay and the NATS stream. Every reader is reduced to the same `View` (the messages, as the market published
them, in the order the reader gave them, with receive times and ids where it has them), and every view is held
to the same facts (test_invariants.py):

- nothing that the market did not publish, and nothing more often than it published it;
- nothing missing, except what was published while no copy of its contract's connection group was connected
  (`ime-segments stats` tells those intervals; a mode without drops or kills has none inside the run);
- ids (where the reader has them) unique; times (where it has them) in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from live_util import free_port, relay_base
from nats_util import NATS_SERVER, NatsServer, stream_messages, wait_jetstream
from record_util import RecorderProcess
from sim_util import SimProcess

from recorder.feed.endpoints import EndpointKind, build_url
from recorder.feed.message import identifier_of
from recorder.model.record import RecordKind
from recorder.segment.coverage import Coverage, GroupCoverage
from recorder.segment.layout import DayLayout
from recorder.segment.reader import discover, merge_records, open_segment
from recorder.sim.market import message_prefix

BIN = Path(sys.executable).parent
S = 1_000_000_000
RUN_S = 6.0
# Messages this close to the start or end of a contract's recorded span are left out of the comparison: the
# recorder connects and stops while the market publishes.
EDGE_NS = S // 2
# A connection drop is noticed a little after the server cut it (an event-loop turn; more on a loaded machine).
NOTICE_NS = S // 4


@dataclass(frozen=True, slots=True)
class Mode:
    """How one recording of the matrix is made."""

    name: str
    record_args: tuple[str, ...] = ()
    sim_args: tuple[str, ...] = ()
    by_name: bool = False
    kill_worker_at_s: float | None = None  # SIGKILL one worker this long after the recorder started
    midnight_at_s: float | None = None  # the recorder's clock puts Tehran midnight this far into the run
    two_recorders: bool = False  # two recorders of the same market, merged with `ime-segments merge`
    drops: bool = False  # connections are dropped by the simulator (messages may go missing while none is up)
    max_message_bytes: int = 16 << 20  # larger messages are recorded as an `oversized` event, not as themselves


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("plain"),
    # Drops, and a market that publishes the same bytes again about one dedupe window later: a copy of the second
    # original must not be stored as a message of its own when the first leaves the window.
    Mode("redundant", record_args=("--redundancy", "2", "--dedupe-window", "1"),
         sim_args=("--drop-every", "2", "--repeat-every", "0.03", "--repeat-after", "1"), drops=True),
    Mode("killed", record_args=("--flush-ms", "50"), kill_worker_at_s=2.5),
    Mode("rotated", record_args=("--rotate-mb", "0.01", "--frame-kib", "16")),
    Mode("midnight", midnight_at_s=3.0),
    Mode("by-name", by_name=True),
    Mode("binary-oversized", record_args=("--max-message-bytes", "20000"), max_message_bytes=20_000,
         sim_args=("--binary-every", "0.4", "--oversized-every", "0.7", "--oversized-bytes", "50000",
                   "--malformed-every", "0.9", "--fragment-every", "0.5")),
    Mode("merged", two_recorders=True),
)}


@dataclass(slots=True)
class Run:
    """One mode's recording and everything the matrix reads about it."""

    mode: Mode
    work: Path
    out: Path  # the recording the readers read (for `merged`: the merge of the two recorders')
    published: Path
    sent: Path
    sim_info: dict[str, Any]
    recorders: list[RecorderProcess]
    sources: list[Path]  # what each recorder wrote (one, or two for `merged`)
    relay: list[bytes] = field(default_factory=list)  # what the relay client received, in order
    relay_error: str | None = None
    nats: list[tuple[str, bytes, dict[str, Any]]] | None = None  # the stream (None: no nats-server here)
    merge_stdout: str = ""

    # -- the market's truth, normalised --------------------------------------------------------------------

    def normalise(self) -> Callable[[bytes], bytes]:
        """By-name payloads as the by-id envelope the published log holds (the only difference between them)."""
        if not self.mode.by_name:
            return lambda p: p
        swap = {message_prefix("contractName", name): message_prefix("contractId", cid)
                for cid, name in zip(self.sim_info["ids"], self.sim_info["names"], strict=True)}

        def by_id(payload: bytes) -> bytes:
            head = payload[:payload.find(b'"timestamp":"') + 13]
            return swap[head] + payload[len(head):] if head in swap else payload

        return by_id

    def published_messages(self) -> dict[bytes, list[int]]:
        """Each message the market published, with the times it published it (a repeat is the same bytes again,
        later), and what the simulator's faults injected beside it (fragmented, malformed frames: sent, never
        published; their send times), as the recording must hold them."""
        published: dict[bytes, list[int]] = defaultdict(list)
        for r in merge_records([open_segment(p) for p in discover([self.published])]):
            if r.kind == RecordKind.TEXT:
                published[r.payload].append(r.ts_ns)
        if self.mode.sim_args:
            # Only what a fault made (a fresh frame): every connection got the market's own messages anyway; and a
            # frame over the recorder's limit is an `oversized` event in the recording (checked on its own).
            for p in discover([self.sent]):
                for r in open_segment(p).iter_records():
                    if (r.kind == RecordKind.TEXT and r.payload not in published and identifier_of(r.payload)
                            and len(r.payload) <= self.mode.max_message_bytes):
                        published.setdefault(r.payload + b"\0injected", []).append(r.ts_ns)
            for key in [k for k in published if k.endswith(b"\0injected")]:
                # Sent on one connection each; a frame sent once per connection is one message.
                published[key[:-9]] = published.pop(key)[:1]
        return dict(published)

    def coverage(self) -> list[GroupCoverage]:
        """Connection groups of the recording(s) the readers read, with the intervals no copy was connected."""
        groups: list[GroupCoverage] = []
        for directory in self.sources:
            cov = Coverage()
            for rec in merge_records([open_segment(p) for p in discover([directory])]):
                cov.add(rec.ts_ns, rec.shard, rec.conn, rec.kind, rec.payload)
            groups.extend(cov.finish())
        return groups

    def recorder_stderr(self) -> str:
        return "\n".join(r.stderr for r in self.recorders)


@dataclass(slots=True)
class View:
    """What one reader gave: payloads (normalised), with receive times and ids where the reader has them."""

    payloads: list[bytes]
    times: list[int] | None = None  # receive ns, one per payload, in the reader's order
    ids: list[Any] | None = None
    ordered: str = "global"  # "global": times never step back; "contract": per contract only; "none"
    live: bool = False  # a live client: it covers each contract from its first to its last message of it
    excused: int = 0  # messages the recorder counted and reported as not delivered to this reader


# --- making a recording ------------------------------------------------------------------------------------


def _midnight_shift(at_s: float) -> float:
    """The clock shift (s) that puts the next Tehran midnight `at_s` seconds from now."""
    now = time.time_ns()
    end = DayLayout(ZoneInfo("Asia/Tehran")).day_bounds(now)[1]
    return (end - now) / S - at_s


class RelayClient:
    """A client of the recorder's relay on every contract, from as soon as the relay listens to the end."""

    def __init__(self, rec: RecorderProcess, kind: EndpointKind, contracts: list[str]) -> None:
        self.rec, self.kind, self.contracts = rec, kind, contracts
        self.got: list[bytes] = []
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RelayClient:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            base = relay_base(self.rec, timeout=60)
            asyncio.run(self._read(build_url(base, self.kind, self.contracts)))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    async def _read(self, url: str) -> None:
        import websockets

        async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for msg in ws:
                    self.got.append(msg.encode() if isinstance(msg, str) else msg)

    def join(self, timeout: float = 30.0) -> None:
        self.thread.join(timeout)


NATS_LACKS = re.compile(r"^ime-record: error: NATS lacks (\d+) of the \d+ messages", re.M)


def nats_short_exit(rec: RecorderProcess) -> int:
    """The exit code a run may have when its only error is that NATS lacks messages: on a busy machine the hub,
    which yields the CPU to the workers, can fall behind and shed (counted, reported; the recording is whole)."""
    errors = [line for line in rec.stderr.splitlines() if line.startswith("ime-record: error:")]
    return 1 if errors and all(NATS_LACKS.match(line) for line in errors) else 0


def nats_lacking(run: Run) -> int:
    """How many messages the recorders said NATS lacks (0 when none said so)."""
    return sum(int(m[1]) for r in run.recorders for m in NATS_LACKS.finditer(r.stderr))


def make_run(mode: Mode, work: Path) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    published, sent = work / "published", work / "sent"
    sim = SimProcess(work, "--contracts", "8", "--rate", "400", "--seed", "7", "--published-log", str(published),
                     "--sent-log", str(sent), *mode.sim_args).start()
    nats: NatsServer | None = None
    try:
        if NATS_SERVER is not None:
            nats = NatsServer(work).start()
            asyncio.run(wait_jetstream(nats.url))
        info = sim.info
        kind = EndpointKind.NAME if mode.by_name else EndpointKind.ID
        contracts = info["names"] if mode.by_name else info["ids"]
        env = {"IME_USERNAME": info["username"], "IME_PASSWORD": info["password"]}
        if mode.midnight_at_s is not None:
            env["IME_RECORDER_CLOCK_SHIFT_S"] = str(_midnight_shift(mode.midnight_at_s))
        common = ["--names" if mode.by_name else "--ids", ",".join(contracts), "--base-url", info["base_url"],
                  "--token-url", info["token_url"], "--duration", str(RUN_S), *mode.record_args]
        outs = [work / "rec-a", work / "rec-b"] if mode.two_recorders else [work / "rec"]
        recorders = []
        for k, out in enumerate(outs):
            live = ["--relay", "127.0.0.1:0"] if k == 0 else []
            if nats is not None:
                live += ["--publish", nats.url]
            shards = "2" if k == 0 else "3"  # two recorders shard differently: merge must not care
            recorders.append(RecorderProcess(work, *common, "--shards", shards, "--out", str(out), *live,
                                             env=env).start())
        relay = RelayClient(recorders[0], kind, contracts).start()
        try:
            if mode.kill_worker_at_s is not None:
                time.sleep(mode.kill_worker_at_s)
                pids = recorders[0].worker_pids()
                assert pids, recorders[0].stderr
                os.kill(pids[0], signal.SIGKILL)
            for r in recorders:
                assert r.wait(RUN_S + 90) in (0, nats_short_exit(r)), r.stderr
        finally:
            for r in recorders:
                r.kill_tree()
        relay.join()
        assert sim.stop(signal.SIGTERM) == 0, sim.stderr
        run = Run(mode, work, outs[0], published, sent, info, recorders, outs, relay.got, relay.error)
        if nats is not None:
            run.nats = asyncio.run(stream_messages(nats.url))
        if mode.two_recorders:
            run.out = work / "merged"
            got = subprocess.run([str(BIN / "ime-segments"), "merge", *map(str, outs), "--out", str(run.out)],
                                 capture_output=True, text=True, timeout=120)
            assert got.returncode == 0, got.stderr
            run.merge_stdout = got.stdout
        return run
    finally:
        sim.kill()
        if nats is not None:
            nats.kill()


# --- the readers ----------------------------------------------------------------------------------------


def segments_cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[bytes]:
    got = subprocess.run([str(BIN / "ime-segments"), *args], capture_output=True, timeout=180)
    if ok:
        assert got.returncode == 0, got.stderr.decode()
    return got


def _market(run: Run, payloads: list[bytes], times: list[int] | None = None) -> View:
    """Keep the market's messages (envelopes with a contract), normalised; binary and malformed frames go."""
    norm = run.normalise()
    keep = [k for k, p in enumerate(payloads) if identifier_of(p) is not None]
    return View([norm(payloads[k]) for k in keep], [times[k] for k in keep] if times is not None else None)


def _live_window(view: View) -> View:
    """A live client sees what arrived after it subscribed: per contract, from its first message on (check_view
    turns those into publication times)."""
    view.live = True
    return view


def read_cat_raw(run: Run) -> View:
    lines = segments_cli("cat", str(run.out), "--format", "raw").stdout.split(b"\n")[:-1]
    return _market(run, lines)


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


def _frame(line: dict[str, Any]) -> bytes | None:
    frame = line.get("frame")
    return orjson.dumps(frame) if frame is not None else None


def read_cat_jsonl(run: Run) -> View:
    lines = [x for x in _jsonl(segments_cli("cat", str(run.out)).stdout) if x["kind"] == "text"]
    # Frames are embedded byte for byte; orjson re-dumps them compactly, which is how the simulator writes them.
    view = _market(run, [_frame(x) or x.get("text", "").encode() for x in lines], [x["recv_ns"] for x in lines])
    view.ids = [(x["shard"], x["conn"], x["recv_ns"]) for x in lines if x.get("contract")]
    return view


def read_all_copies(run: Run) -> View:
    """--all-copies: the originals are the default view; every copy resolves to a message recorded before it."""
    lines = [x for x in _jsonl(segments_cli("cat", str(run.out), "--all-copies", "--no-events").stdout)
             if x["kind"] in ("text", "receipt")]
    originals = [x for x in lines if x["kind"] == "text"]
    seen: Counter[bytes] = Counter()
    for x in lines:
        frame = _frame(x)
        if x["kind"] == "text" and frame is not None:
            seen[frame] += 1
        elif x["kind"] == "receipt" and frame is not None:
            assert seen[frame] > 0, f"a copy at {x['recv_ns']} of a message not recorded before it"
            assert x["copy_of"]["recv_ns"] <= x["recv_ns"]
    return _market(run, [_frame(x) or b"" for x in originals], [x["recv_ns"] for x in originals])


def stats_counts(run: Run) -> dict[str, int]:
    """`ime-segments stats --json`: messages per contract (as ids)."""
    doc = orjson.loads(segments_cli("stats", str(run.out), "--json").stdout)
    to_id = dict(zip(run.sim_info["names"], run.sim_info["ids"], strict=True))
    return {to_id.get(c, c): v["records"] for c, v in doc["contracts"].items() if c != "(none)"}


def ls_totals(run: Run) -> dict[str, int]:
    """`ime-segments ls`: per file the index's record and copy counts, summed."""
    text = segments_cli("ls", str(run.out)).stdout.decode()
    rows = [line.split() for line in text.splitlines()[1:] if line.strip()]
    return {"records": sum(int(r[4]) for r in rows), "copies": sum(int(r[5]) for r in rows if r[5] != "-"),
            "files": len(rows), "sealed": sum(r[-1] == "sealed" for r in rows)}


def read_export(run: Run) -> View:
    """export: one row set per message; (segment, record) unique per table and naming a stored record."""
    import pyarrow.dataset as ds

    target = run.work / f"export-{time.monotonic_ns()}"
    segments_cli("export", str(run.out), "--out", str(target), "-q")
    stored = {}
    for path in discover([run.out]):
        for k, rec in enumerate(open_segment(path).iter_records(expand=False)):
            stored[(path.name, k)] = rec
    keys: set[tuple[str, int]] = set()
    for table in ("best_limit", "aggregate", "allowed_price_range", "contract_info", "messages"):
        if not (target / table).exists():
            continue
        t = ds.dataset(target / table, format="parquet", partitioning="hive").to_table()
        pairs = list(zip(t.column("segment").to_pylist(), t.column("record").to_pylist(), strict=True))
        assert len(pairs) == len(set(pairs)), f"a (segment, record) pair names two rows in {table}"
        if table == "messages":
            kinds = t.column("kind").to_pylist()
            pairs = [p for p, k in zip(pairs, kinds, strict=True) if k == "text"]
        keys.update(pairs)
    ordered_keys = sorted(keys, key=lambda k: (stored[k].ts_ns, k))
    view = _market(run, [stored[k].payload for k in ordered_keys], [stored[k].ts_ns for k in ordered_keys])
    view.ids = ordered_keys
    return view


def read_api_messages(run: Run) -> View:
    import recorder

    msgs = list(recorder.open_recording(run.out).messages())
    view = _market(run, [m.raw for m in msgs], [m.recv_ns for m in msgs])
    return view


def read_api_arrow(run: Run) -> View:
    """to_arrow("best_limit"): one row per message with a BestLimit section (every simulator message has one)."""
    import recorder

    t = recorder.open_recording(run.out).to_arrow("best_limit")
    stored = {}
    for path in discover([run.out]):
        for k, rec in enumerate(open_segment(path).iter_records(expand=False)):
            stored[(path.name, k)] = rec
    keys = list(zip(t.column("segment").to_pylist(), t.column("record").to_pylist(), strict=True))
    view = _market(run, [stored[k].payload for k in keys], t.column("recv_time").cast("int64").to_pylist())
    view.ids = keys
    return view


def read_replay_stdout(run: Run) -> View:
    got = subprocess.run([sys.executable, "-m", "recorder.cli.replay", str(run.out), "--speed", "max", "--format",
                          "raw", "-q"], capture_output=True, timeout=180)
    assert got.returncode == 0, got.stderr.decode()
    # The same records in the same order as `cat --format raw`: one merge of the shards for every reader.
    assert got.stdout == segments_cli("cat", str(run.out), "--format", "raw").stdout
    return _market(run, got.stdout.split(b"\n")[:-1])


def read_replay_jsonl(run: Run) -> View:
    got = subprocess.run([sys.executable, "-m", "recorder.cli.replay", str(run.out), "--speed", "max", "-q"],
                         capture_output=True, timeout=180)
    assert got.returncode == 0, got.stderr.decode()
    lines = [x for x in _jsonl(got.stdout) if x["kind"] == "text"]
    return _market(run, [_frame(x) or b"" for x in lines], [x["recv_ns"] for x in lines])


def read_replay_serve(run: Run) -> View:
    """ime-replay --serve at full speed, a client on every contract (both endpoints' ids as the recording has)."""
    import websockets

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recorder.cli.replay", str(run.out), "--serve", f"127.0.0.1:{port}",
                             "--speed", "max", "--start", "first-client", "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    kind = EndpointKind.NAME if run.mode.by_name else EndpointKind.ID
    contracts = run.sim_info["names"] if run.mode.by_name else run.sim_info["ids"]
    got: list[bytes] = []

    async def client() -> None:
        base = None
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while base is None and time.monotonic() < deadline:
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stderr.readline)
            m = re.search(rb"serving (ws://\S+)", line)
            if m:
                base = m.group(1).decode()
            elif not line:
                break
        assert base is not None, "ime-replay --serve did not say where it serves"
        async with websockets.connect(build_url(base, kind, contracts), max_size=None, open_timeout=30) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for msg in ws:
                    got.append(msg.encode() if isinstance(msg, str) else msg)

    try:
        asyncio.run(asyncio.wait_for(client(), 120))
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    view = _market(run, got)
    view.ordered = "contract"
    return view


def read_merge(run: Run) -> View:
    """The recording merged with a copy of itself: every message of the copy is a copy, nothing changes."""
    twin = run.work / f"twin-{time.monotonic_ns()}"
    shutil.copytree(run.out, twin)
    target = run.work / f"remerged-{time.monotonic_ns()}"
    segments_cli("merge", str(run.out), str(twin), "--out", str(target))
    return _market(run, segments_cli("cat", str(target), "--format", "raw").stdout.split(b"\n")[:-1])


def read_relay(run: Run) -> View:
    assert run.relay_error is None, run.relay_error
    view = _market(run, run.relay)
    view.ordered = "contract"
    return _live_window(view)


def read_nats(run: Run) -> View:
    assert run.nats is not None
    view = _market(run, [data for _, data, _ in run.nats], [int(h["Ime-Receive-Ns"]) for _, _, h in run.nats])
    view.ids = [h["Nats-Msg-Id"] for _, _, h in run.nats]
    view.excused = nats_lacking(run)
    # One recorder publishes each contract in its receive order. Two recorders race for every message (NATS keeps
    # the first Msg-Id), so a contract's messages can come from either, and their order is theirs, not the merge's.
    view.ordered = "none" if run.mode.two_recorders else "contract"
    return _live_window(view)


READERS: dict[str, Callable[[Run], View]] = {
    "cat-raw": read_cat_raw,
    "cat-jsonl": read_cat_jsonl,
    "all-copies": read_all_copies,
    "export": read_export,
    "api-messages": read_api_messages,
    "api-arrow": read_api_arrow,
    "replay-stdout": read_replay_stdout,
    "replay-jsonl": read_replay_jsonl,
    "replay-serve": read_replay_serve,
    "merge": read_merge,
    "relay": read_relay,
    "nats": read_nats,
}


# --- the facts ------------------------------------------------------------------------------------------


def contract_spans(payloads: Iterable[bytes], published: dict[bytes, list[int]]) -> dict[str, tuple[int, int]]:
    """Per contract, from the first to the last publication among `payloads`. A message published twice (a
    repeat) counts by its later publication for the start and its earlier for the end: the span can only shrink."""
    spans: dict[str, tuple[int, int]] = {}
    for p in payloads:
        c, times = identifier_of(p), published.get(p)
        if c is None or not times:
            continue
        start, end = max(times), min(times)
        lo, hi = spans.get(c, (start, end))
        spans[c] = (min(lo, start), max(hi, end))
    return spans


def check_view(run: Run, view: View, reference: list[bytes], name: str) -> dict[str, int]:
    """The facts every reader must hold (see the module docstring); returns a few figures for the report.

    `reference` is the recording's default view (cat --format raw): the span of each contract in it bounds the
    comparison, since the market publishes before the recorder connects and after it stops.
    """
    published = run.published_messages()
    got = Counter(view.payloads)
    invented = {p: n for p, n in got.items() if n > len(published.get(p, ()))}
    assert not invented, (f"{name}: {len(invented)} messages more often than the market published them, e.g. "
                          f"{next(iter(invented))[:120]!r}")
    spans = contract_spans(reference, published)
    if view.live:
        first: dict[str, bytes] = {}
        for p in view.payloads:
            first.setdefault(identifier_of(p) or "", p)
        last: dict[str, bytes] = {}
        for p in view.payloads:
            last[identifier_of(p) or ""] = p
        starts, ends = contract_spans(first.values(), published), contract_spans(last.values(), published)
        spans = {c: (max(lo, starts.get(c, (hi, hi))[0]), min(hi, ends.get(c, (lo, lo))[1]))
                 for c, (lo, hi) in spans.items()}
    to_id = dict(zip(run.sim_info["names"], run.sim_info["ids"], strict=True))
    groups = run.coverage()
    gaps_may_lose = run.mode.drops or run.mode.kill_worker_at_s is not None
    missing = unexplained = interior = 0
    examples: list[str] = []
    for payload, times in published.items():
        contract = identifier_of(payload)
        if contract is None or contract not in spans:
            continue
        lo, hi = spans[contract]
        # Judged by when it was published (a repeat carries its first publication's timestamp in its bytes).
        inside = [t for t in times if lo + EDGE_NS <= t <= hi - EDGE_NS]
        interior += len(inside)
        short = len(times) - got[payload]
        if short <= 0:
            continue
        missing += short
        excused = (len(times) - len(inside)) + (sum(explained(groups, to_id, contract, t) for t in inside)
                                                if gaps_may_lose else 0)
        if short > excused:
            unexplained += short - excused
            examples.append(f"{contract}@{inside[0]}")
    assert interior > 0, f"{name}: nothing to compare"
    assert unexplained <= view.excused, (
        f"{name}: {unexplained} of {interior} published messages missing while their group had a copy connected "
        f"({missing} missing in all; {view.excused} reported as not delivered), e.g. {examples[:5]}")
    if view.ids is not None:
        assert len(view.ids) == len(set(view.ids)), f"{name}: ids repeat"
    if view.times is not None and view.ordered == "global":
        steps = sum(1 for a, b in zip(view.times, view.times[1:], strict=False) if b < a)
        assert not steps, f"{name}: receive times step back {steps} times"
    if view.ordered == "contract":
        assert_in_reference_order(view.payloads, reference, name)
    return {"interior": interior, "missing": missing}


def assert_in_reference_order(payloads: list[bytes], reference: list[bytes], name: str) -> None:
    """Per contract, `payloads` come in the order the recording has them (a live client may miss some): each is
    matched to its next occurrence in the recording after the previous match of its contract."""
    position: dict[bytes, list[int]] = defaultdict(list)
    for k, p in enumerate(reference):
        position[p].append(k)
    last: dict[str | None, int] = {}
    for p in payloads:
        places = position.get(p)
        if not places:
            continue  # not in the recording (a killed worker's last batch reached the hub, not the disk)
        contract = identifier_of(p)
        after = last.get(contract, -1)
        at = next((k for k in places if k > after), None)
        assert at is not None, f"{name}: {contract} out of the recording's order at {p[:100]!r}"
        last[contract] = at


def explained(groups: list[GroupCoverage], to_id: dict[str, str], contract: str, ts: int) -> bool:
    """Was `ts` within an interval when no copy of the contract's group was connected (± the notice slack)?"""
    for g in groups:
        if contract in {to_id.get(c, c) for c in g.contracts}:
            for a, b in g.gaps:
                if a - NOTICE_NS <= ts <= b + NOTICE_NS:
                    return True
    return False
