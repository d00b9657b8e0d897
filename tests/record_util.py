"""Running the real recorder (`python -m recorder.cli.record`) as a process tree, and checking what it wrote."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from recorder.events import decode_event
from recorder.model.record import RecordKind, decode_receipt
from recorder.segment.reader import discover, open_segment


class RecorderProcess:
    """ime-record in its own session, so teardown can kill the supervisor and every worker it started."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        stamp = time.monotonic_ns()
        self.stdout_path = workdir / f"record-{stamp}.out"
        self.stderr_path = workdir / f"record-{stamp}.err"
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RecorderProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "recorder.cli.record", *self.args], stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        return self

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill_tree(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def worker_pids(self) -> list[int]:
        """The running workers, oldest first: processes named ime-rec-sNN (forked by the supervisor's fork
        server, so its grandchildren), or, as recorders before issue 21 started them, spawned children."""
        assert self.proc is not None
        named = sorted((_start_time(p), p) for p in _descendants(self.proc.pid) if _comm(p).startswith("ime-rec-s"))
        if named:
            return [p for _, p in named]
        pids = _children(self.proc.pid)
        # multiprocessing's resource tracker is a child too, and so is the live hub (--relay, --publish); workers
        # are the other ones running multiprocessing.spawn.
        return [p for p in pids if "multiprocessing.spawn" in _cmdline(p) and "resource_tracker" not in _cmdline(p)
                and _comm(p) != "ime-live-hub"]

    def worker_thread_nices(self) -> dict[int, list[int]]:
        """Each worker's threads' nice values, main thread first (Linux: getpriority takes a thread id)."""
        out: dict[int, list[int]] = {}
        for pid in self.worker_pids():
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
            out[pid] = [os.getpriority(os.PRIO_PROCESS, pid)] + [os.getpriority(os.PRIO_PROCESS, t)
                                                                  for t in tids if t != pid]
        return out

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"recorder exited ({self.proc.returncode}) before {text!r}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.stderr}")
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def connections(paths: list[Path]) -> tuple[dict[object, list[tuple[int, bytes]]], dict[object, dict]]:
    """Payload records (kind, bytes) per connection and each connection's `opened` event.

    A connection is (shard, worker incarnation, conn id) in a recording; conn ids restart in every worker.
    """
    data: dict[object, list[tuple[int, bytes]]] = defaultdict(list)
    opened: dict[object, dict] = {}
    # With --redundancy a later copy is a receipt naming its original: resolve it, so that each
    # connection's sequence is what arrived on it (and the receipt is proven to name the right bytes).
    originals: dict[tuple[int, int, int, int], tuple[int, bytes]] = {}
    for path in sorted(paths):
        seg = open_segment(path)
        worker = seg.header.meta.get("worker") or {}
        incarnation = worker.get("incarnation", 0) if isinstance(worker, dict) else 0
        for rec in seg.iter_records():
            key = (seg.shard, incarnation, rec.conn)
            if rec.kind == RecordKind.EVENT:
                event = decode_event(rec.payload)
                if event.get("event") == "opened":
                    opened[key] = {**event, "_ts": rec.ts_ns}
            elif rec.kind == RecordKind.RECEIPT:
                orig_conn, lag = decode_receipt(rec.payload)
                original = originals.get((seg.shard, incarnation, orig_conn, rec.ts_ns - lag))
                assert original is not None, f"receipt at {rec.ts_ns} on {key} names no recorded original"
                data[key].append(original)
            else:
                originals[(seg.shard, incarnation, rec.conn, rec.ts_ns)] = (rec.kind, rec.payload)
                data[key].append((rec.kind, rec.payload))
        assert not seg.damage, seg.damage
    return data, opened


PAIRING_SLACK_NS = 500_000_000


def pair_connections(sent_opened: dict[object, dict], got_opened: dict[object, dict]) -> dict[object, object]:
    """Each simulator connection's recorded connection: the same client port, opened at the nearest time.

    A port alone is not enough: Linux reuses a loopback port as soon as its connection closed (tcp_tw_reuse),
    so a recorder that reconnects every few seconds, or a second recorder on the same simulator, can open a
    later connection on a port an earlier one had. Closest opening times first, each side matched once.
    """
    by_port: dict[object, list[tuple[int, object]]] = defaultdict(list)
    for key, event in got_opened.items():
        by_port[event.get("local")].append((event["_ts"], key))
    candidates = sorted((abs(ts - event["_ts"]), key, got)
                        for key, event in sent_opened.items() for ts, got in by_port.get(event.get("peer"), ())
                        if abs(ts - event["_ts"]) <= PAIRING_SLACK_NS)
    pairs: dict[object, object] = {}
    taken: set[object] = set()
    for _, key, got in candidates:
        if key not in pairs and got not in taken:
            pairs[key] = got
            taken.add(got)
    return pairs


def compare_with_sent_log(recording: Path, sent_log: Path, partial: bool = False) -> dict[str, int]:
    """Assert that every message the simulator sent is recorded once, byte for byte, per connection in order.

    `partial`: the simulator also served other clients; check only its connections to this recording.
    """
    rec_files = [p for p in discover([recording]) if p.name.startswith("ime-")]
    sent_data, sent_opened = connections(discover([sent_log]))
    got_data, got_opened = connections(rec_files)
    pairs = pair_connections(sent_opened, got_opened)
    matched = 0
    messages = 0
    for key, event in sent_opened.items():
        sent = sent_data.get(key, [])
        peer = event.get("peer")
        if partial and key not in pairs:
            continue
        assert key in pairs, f"sim connection {key} from {peer} has no `opened` event in the recording"
        got = got_data.get(pairs[key], [])
        assert len(got) == len(sent), f"connection {peer}: sent {len(sent)} messages, recorded {len(got)}"
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            assert a == b, f"connection {peer}: message {i} differs: sent {a[1][:80]!r}, recorded {b[1][:80]!r}"
        matched += 1
        messages += len(sent)
    extra = set(got_data) - set(pairs.values())
    assert not any(got_data[k] for k in extra), f"recorded messages on connections the sim never served: {extra}"
    return {"connections": matched, "messages": messages}
