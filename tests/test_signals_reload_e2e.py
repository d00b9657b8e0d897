"""Signals end to end (issue 21): SIGHUP reloads the contract list and the config file, resubscribing only the
connection groups whose contracts changed; no signal a user can send (to the supervisor or to its whole process
group) leaves an `.open` file or loses a frame; a console that goes away is survived; a shard that never
connected fails the run; a worker killed again and again records again within 2 s each time.

Real supervisor and worker processes, real picows sockets to ime-sim, real files and signals; every frame the
simulator sent is checked against its `--sent-log`.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from record_util import RecorderProcess, compare_with_sent_log, connections

from recorder.events import decode_event
from recorder.model.record import RecordKind
from recorder.record.shard import shard_of
from recorder.segment.reader import discover, open_segment

pytestmark = pytest.mark.slow


def sim_args(sim) -> list[str]:
    return ["--base-url", sim.info["base_url"], "--token-url", sim.info["token_url"]]


def creds(sim) -> dict[str, str]:
    return {"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]}


def records(out: Path, running: bool = False) -> list[tuple[int, int, int, int, int, bytes]]:
    """(ts_ns, shard, worker incarnation, conn, kind, payload) of every record, files in order.

    `running`: the recorder is still writing, so a file's last frame may be incomplete.
    """
    found = []
    for path in sorted(discover([out])):
        try:
            seg = open_segment(path)
        except Exception:
            if running:
                continue
            raise
        assert running or not seg.damage, seg.damage
        worker = seg.header.meta.get("worker") or {}
        incarnation = worker.get("incarnation", 0)
        for rec in seg.iter_records():
            found.append((rec.ts_ns, seg.shard, incarnation, rec.conn, rec.kind, rec.payload))
    return found


def events(out: Path, name: str | None = None, running: bool = False) -> list[tuple[int, int, dict]]:
    """(ts_ns, shard, event) in receive order; each with its connection id added as `_conn`."""
    found = [(ts, shard, {**decode_event(payload), "_conn": conn}) for ts, shard, _, conn, kind, payload
             in records(out, running) if kind == RecordKind.EVENT]
    found.sort(key=lambda e: e[0])
    return [e for e in found if name is None or e[2]["event"] == name]


def contract_times(out: Path) -> dict[str, list[int]]:
    """Receive times of each contract's messages (receipts, copies of a message already recorded, left out)."""
    times: dict[str, list[int]] = defaultdict(list)
    for ts, _, _, _, kind, payload in records(out):
        if kind == RecordKind.TEXT and b'"contractId":"' in payload:
            times[payload.split(b'"contractId":"')[1].split(b'"')[0].decode()].append(ts)
    return times


def no_open_files(out: Path) -> bool:
    return not list(out.rglob("*.open"))


def wait_for_after(rec: RecorderProcess, marker: str, text: str, timeout: float = 60.0) -> None:
    """`text` in stderr after the last `marker` line (e.g. a status line after a reload)."""
    deadline = time.monotonic() + timeout
    while True:
        err = rec.stderr
        at = err.rfind(marker)
        if at >= 0 and text in err[at:]:
            return
        if rec.proc is not None and rec.proc.poll() is not None:
            raise AssertionError(f"recorder exited ({rec.proc.returncode}) before {text!r} after {marker!r}:\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} after {marker!r} within {timeout}s:\n{err}")
        time.sleep(0.05)


def segment_stats(out: Path) -> dict:
    got = subprocess.run([sys.executable, "-m", "recorder.cli.segments", "stats", "--json", str(out)],
                         capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    return orjson.loads(got.stdout)


def published(directory: Path) -> list[tuple[int, str, bytes]]:
    """Every message the simulator's market published: (publish ns, contract id, payload)."""
    out = []
    for path in discover([directory]):
        for rec in open_segment(path).iter_records():
            if rec.kind == RecordKind.TEXT:
                out.append((rec.ts_ns, rec.payload.split(b'"contractId":"')[1].split(b'"')[0].decode(), rec.payload))
    return out


def missing(published_dir: Path, out: Path, contracts: list[str], lo_ns: int, hi_ns: int) -> list[tuple[int, str]]:
    """Messages of `contracts` the market published between lo and hi that are not in the recording."""
    have = Counter(payload for _, _, _, _, kind, payload in records(out) if kind == RecordKind.TEXT)
    lost = []
    for ts, contract, payload in published(published_dir):
        if contract in contracts and lo_ns <= ts < hi_ns:
            if have[payload] > 0:
                have[payload] -= 1
            else:
                lost.append((ts, contract))
    return lost


def pick_by_shard(ids: list[str], shards: int, need: list[int]) -> list[list[str]]:
    """Contracts of `len(need)` distinct shards, need[i] of them from the i-th (rendezvous hashing decides)."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for c in ids:
        by_shard[shard_of(c, shards)].append(c)
    chosen: list[list[str]] = []
    used: set[int] = set()
    for n in need:
        shard = next(s for s in sorted(by_shard, key=lambda s: -len(by_shard[s])) if s not in used
                     and len(by_shard[s]) >= n)
        used.add(shard)
        chosen.append(by_shard[shard][:n])
    return chosen


# --- SIGHUP: reload ------------------------------------------------------------------------------------


@pytest.mark.parametrize("redundancy", [1, 2])
def test_sighup_reload_resubscribes_only_changed_groups_starts_and_stops_shards_and_loses_nothing(
        sim_process, recorder, tmp_path, redundancy):
    sent, out, ids_file, market = tmp_path / "sent", tmp_path / "out", tmp_path / "ids.txt", tmp_path / "market"
    sim = sim_process("--contracts", "40", "--rate", "6000", "--seed", "21", "--sent-log", str(sent),
                      "--published-log", str(market))
    a, b, c, d = pick_by_shard(sim.info["ids"], 4, [5, 1, 1, 2])
    shard_a, shard_b, shard_c, shard_d = (shard_of(x[0], 4) for x in (a, b, c, d))
    # Shard A has two groups of two ([a0, a1], [a2, a3]); a3 leaves and a4 comes: only the second group changes.
    # Shard B loses its only contract (its worker stops), shard C (empty) gains one (a worker starts), shard D
    # keeps its group untouched.
    before = [*a[:4], *b, *d]
    after = [a[0], a[1], a[2], a[4], *d, *c]
    ids_file.write_text("# contracts\n" + "\n".join(before) + "\n")
    rec = recorder("--ids-file", str(ids_file), "--shards", "4", "--max-contracts-per-connection", "2",
                   "--redundancy", str(redundancy), "--status-interval", "1", "--flush-ms", "50", "--out", str(out),
                   *sim_args(sim), env=creds(sim))
    copies = 4 * redundancy  # four groups, every copy open
    rec.wait_for(f"{copies}/{copies} connections", 90)
    time.sleep(1)
    ids_file.write_text("\n".join(after) + "\n")
    hup_ns = time.time_ns()
    rec.signal(signal.SIGHUP)
    rec.wait_for("reload:", 30)
    # Shard C's new worker connected and shard B's stopped: four groups again, every copy open.
    wait_for_after(rec, "reload:", f"{copies}/{copies} connections", 90)
    time.sleep(2)
    stop_ns = time.time_ns()
    rec.signal(signal.SIGTERM)
    assert rec.wait(60) == 0, rec.stderr
    assert sim.stop() == 0, sim.stderr
    assert no_open_files(out)
    assert "Traceback" not in rec.stderr

    reload_lines = [line for line in rec.stderr.splitlines() if "reload:" in line]
    text = "\n".join(reload_lines)
    for contract in (a[3], b[0]):
        assert f"-{contract}" in text, text
    for contract in (a[4], c[0]):
        assert f"+{contract}" in text, text

    # Every message the simulator sent on every connection is recorded once, in order, byte for byte: the
    # handover of the changed group (new connection open before the old one closes) lost and doubled nothing.
    compare_with_sent_log(out, sent)
    # What was sent is not all: every message the market published for a contract listed before and after the
    # reload, from a second before it to just before the stop, is in the recording (no gap at the handover).
    kept = [a[0], a[1], a[2], *d]
    assert not missing(market, out, kept, hup_ns - 10**9, stop_ns - 5 * 10**8)
    times = contract_times(out)
    # A message that arrived on the old and on the new connection is recorded once, the later arrival a receipt:
    # no payload is recorded more often than one connection was sent it (the simulator may send equal bytes twice).
    sent_data, _ = connections(discover([sent]))
    most: dict[bytes, int] = defaultdict(int)
    for msgs in sent_data.values():
        for payload, n in Counter(p for _, p in msgs).items():
            most[payload] = max(most[payload], n)
    texts = [(ts, shard, conn, payload) for ts, shard, _, conn, kind, payload in records(out)
             if kind == RecordKind.TEXT]
    recorded = Counter(payload for *_, payload in texts)
    doubled = [p for p, n in recorded.items() if n > most[p]]
    if doubled:
        # Where each was recorded (ms after the reload, shard, connection) and the connections' events: enough to
        # tell a handover's dedupe from a late old connection (the recording's events are read only then).
        where = [[((ts - hup_ns) // 10**6, shard, conn) for ts, shard, conn, payload in texts if payload == p]
                 for p in doubled[:3]]
        shards = {w[1] for ws in where for w in ws}
        around = [((ts - hup_ns) // 10**6, shard, e["event"], e["_conn"]) for ts, shard, e in events(out)
                  if shard in shards]
        raise AssertionError(f"{len(doubled)} messages recorded twice (a copy must be a receipt): {doubled[:1]}; "
                             f"recorded at {where}; events {around}")

    connecting = [(ts, shard, e) for ts, shard, e in events(out, "connecting") if not e.get("probe")]
    by_set: dict[tuple[int, tuple[str, ...]], list[int]] = defaultdict(list)
    for ts, shard, e in connecting:
        by_set[(shard, tuple(e["contracts"]))].append(ts)
    # The unchanged groups connected once per copy, before the reload, and never again.
    for shard, group in ((shard_a, (a[0], a[1])), (shard_d, tuple(d))):
        assert len(by_set[(shard, group)]) == redundancy, (group, by_set)
        assert all(ts < hup_ns for ts in by_set[(shard, group)])
    # The changed group: once per copy before, once per copy with its new contracts after.
    assert len(by_set[(shard_a, (a[2], a[3]))]) == redundancy and len(by_set[(shard_a, (a[2], a[4]))]) == redundancy
    assert all(ts > hup_ns for ts in by_set[(shard_a, (a[2], a[4]))])
    assert len(by_set[(shard_c, (c[0],))]) == redundancy and all(ts > hup_ns for ts in by_set[(shard_c, (c[0],))])
    started = {shard: [ts for ts, s, _ in events(out, "worker_started") if s == shard] for shard in range(4)}
    assert len(started[shard_c]) == 1 and started[shard_c][0] > hup_ns
    assert all(len(started[s]) == 1 for s in (shard_a, shard_b, shard_d)), started
    stopping = [(ts, e) for ts, s, e in events(out, "worker_stopping") if s == shard_b]
    assert len(stopping) == 1 and stopping[0][0] > hup_ns and "reload" in stopping[0][1]["reason"], stopping
    reloads = [(s, e) for _, s, e in events(out, "reload")]
    assert [(s, e["added"], e["removed"]) for s, e in reloads] == [(shard_a, [a[4]], [a[3]])], reloads

    # The new contracts are recorded after the reload; the removed ones stop with their old connection.
    for contract in (a[4], c[0]):
        assert times[contract] and min(times[contract]) > hup_ns, contract
    closed = {(shard, e["_conn"]): ts for ts, shard, e in events(out, "closed") if not e.get("probe")}
    for contract in (a[3], b[0]):
        # Its connections were closed by the reload, not by the final stop, and nothing of it came later.
        had_it = [(shard, e["_conn"]) for _, shard, e in connecting if contract in e["contracts"]]
        assert had_it and all(hup_ns < closed[k] < stop_ns for k in had_it), (contract, had_it, closed)
        assert times[contract] and max(times[contract]) <= max(closed[k] for k in had_it), contract

    # ime-segments stats: no group was ever without a connection after its first one opened (one gap each:
    # the wait for the first connection), the resubscribed one included.
    stats = segment_stats(out)
    groups = stats["connections"]["groups"]
    assert groups and all(g["gaps"] == 1 for g in groups), groups


def test_a_reload_adding_a_contract_the_server_refuses_loses_nothing_of_the_others(sim_process, recorder, tmp_path):
    """The new connection is refused (an unknown contract); the old one keeps recording its contracts while the
    refusal is bisected, and closes only once the contracts it held are recorded on connections that work."""
    out, ids_file, market = tmp_path / "out", tmp_path / "ids.txt", tmp_path / "market"
    sim = sim_process("--contracts", "6", "--rate", "1500", "--published-log", str(market))
    ids = sim.info["ids"][:3]
    ids_file.write_text("\n".join(ids) + "\n")
    rec = recorder("--ids-file", str(ids_file), "--out", str(out), "--status-interval", "1", *sim_args(sim),
                   env=creds(sim))
    rec.wait_for("1/1 connections", 90)
    time.sleep(1)
    ids_file.write_text("\n".join([*ids, "9999"]) + "\n")
    hup_ns = time.time_ns()
    rec.signal(signal.SIGHUP)
    rec.wait_for("refuses contract 9999", 60)
    wait_for_after(rec, "refuses contract 9999", "2/2 connections", 60)  # 1001-1002 and 1003, each on its own
    time.sleep(1)
    stop_ns = time.time_ns()
    rec.signal(signal.SIGTERM)
    assert rec.wait(60) == 0, rec.stderr
    assert sim.stop() == 0, sim.stderr
    assert no_open_files(out) and "Traceback" not in rec.stderr
    assert [e["contracts"] for _, _, e in events(out, "rejected")] == [["9999"]]
    assert not missing(market, out, ids, hup_ns - 10**9, stop_ns - 5 * 10**8)
    # The group the refusal split ends where its halves take over: ime-segments stats sees no gap in a group that
    # recorded anything but its wait for its first connection (a group holding 9999 is refused within ms).
    groups = segment_stats(out)["connections"]["groups"]
    working = [g for g in groups if sum(c["first"] for c in g["copies"].values())]
    assert len(working) == 3 and all(g["gaps"] == 1 for g in working), groups


def test_sighup_with_nothing_changed_is_one_line_a_broken_config_keeps_the_running_settings(sim_process, recorder,
                                                                                              tmp_path):
    out, ids_file, cfg = tmp_path / "out", tmp_path / "ids.txt", tmp_path / "rec.toml"
    sim = sim_process("--contracts", "4", "--rate", "400")
    ids_file.write_text("\n".join(sim.info["ids"]) + "\n")
    good = (f'ids-file = "ids.txt"\nout = "{out}"\nbase-url = "{sim.info["base_url"]}"\n'
            f'token-url = "{sim.info["token_url"]}"\nmax-contracts-per-connection = 2\nstatus-interval = 1\n')
    cfg.write_text(good)
    rec = recorder("--config", str(cfg), env=creds(sim))
    rec.wait_for("2/2 connections", 90)

    rec.signal(signal.SIGHUP)
    rec.wait_for("reload:", 30)
    time.sleep(1)
    lines = [line for line in rec.stderr.splitlines() if "reload" in line]
    assert len(lines) == 1 and "nothing changed" in lines[0], lines

    cfg.write_text(good + "shards = [\n")
    rec.signal(signal.SIGHUP)
    wait_for_after(rec, "nothing changed", "reload:", 30)
    time.sleep(1)
    lines = [line for line in rec.stderr.splitlines() if "reload" in line]
    assert len(lines) == 2 and " ERROR " in lines[1] and "not valid TOML" in lines[1], lines
    assert "keeping the running settings" in lines[1]

    cfg.write_text(good + "shards = 3\nflush-ms = 100\n")
    rec.signal(signal.SIGHUP)
    wait_for_after(rec, "keeping the running settings", "takes effect at the next start", 30)
    time.sleep(1)
    new = rec.stderr[rec.stderr.rfind("keeping the running settings"):]
    assert "shards 1 → 3" in new and "flush-ms 200.0 → 100.0" in new, new

    assert rec.proc is not None and rec.proc.poll() is None
    rec.signal(signal.SIGTERM)
    assert rec.wait(60) == 0, rec.stderr
    assert no_open_files(out) and "Traceback" not in rec.stderr
    # Nothing reconnected: one connection per group, opened once.
    opened = [e for _, _, e in events(out, "opened")]
    assert len(opened) == 2, opened
    assert not events(out, "reload")


def test_sighup_tells_the_live_relay_which_contracts_it_may_serve(sim_process, recorder, tmp_path):
    from live_util import relay_base
    from sim_util import picows_session, run

    from recorder.feed.endpoints import EndpointKind, build_url

    out, ids_file = tmp_path / "out", tmp_path / "ids.txt"
    sim = sim_process("--contracts", "6", "--rate", "1500")
    ids = sim.info["ids"]
    ids_file.write_text(f"{ids[0]}\n{ids[1]}\n")
    rec = recorder("--ids-file", str(ids_file), "--out", str(out), "--relay", "127.0.0.1:0", *sim_args(sim),
                   env={**creds(sim), "IME_RELAY_TOKEN": "relay-tok"})
    base = relay_base(rec, 60)
    rec.wait_for("the feed accepted shard", 90)

    def subscribe(contract: str, timeout: float = 10.0):
        return run(picows_session(build_url(base, EndpointKind.ID, [contract]), "relay-tok",
                                  done=lambda s: len(s.texts()) >= 20, timeout=timeout), timeout + 20)

    refused = subscribe(ids[2], 5)
    assert refused.close_code == 1008 and not refused.texts(), (refused.close_code, refused.close_reason)
    ids_file.write_text(f"{ids[0]}\n{ids[2]}\n")
    rec.signal(signal.SIGHUP)
    rec.wait_for("reload:", 30)
    deadline = time.monotonic() + 60
    while True:  # the hub learns the list a moment after the reload line; then the new contract's data flows
        session = subscribe(ids[2])
        if len(session.texts()) >= 20 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(session.texts()) >= 20, (session.close_code, session.close_reason)
    assert all(orjson.loads(t)["contractId"] == ids[2] for t in session.texts())
    removed = subscribe(ids[1], 5)
    assert removed.close_code == 1008 and "unknown contract" in removed.close_reason
    rec.signal(signal.SIGTERM)
    assert rec.wait(60) == 0, rec.stderr
    assert no_open_files(out)


# --- signals to the process group ------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "relay"), [(signal.SIGHUP, True), (signal.SIGQUIT, False), (signal.SIGTERM, True),
                                            (signal.SIGINT, False)])
def test_a_signal_to_the_whole_process_group_seals_everything_and_loses_nothing(sim_process, recorder, tmp_path,
                                                                                 sig, relay):
    sent, out = tmp_path / "sent", tmp_path / "out"
    sim = sim_process("--contracts", "8", "--rate", "3000", "--sent-log", str(sent))
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "2", "--out", str(out), "--status-interval", "1",
                   "--flush-ms", "200", *(["--relay", "0"] if relay else []), *sim_args(sim), env=creds(sim))
    rec.wait_for("2/2 connections", 90)
    if relay:
        rec.wait_for("live relay serving", 60)
    workers = rec.worker_pids()
    assert len(workers) == 2
    time.sleep(1)
    assert rec.proc is not None
    os.killpg(rec.proc.pid, sig)
    if sig == signal.SIGHUP:
        # A reload for the supervisor (a dropped SSH session sends it too); nothing for the workers or the hub.
        rec.wait_for("reload:", 30)
        time.sleep(2)
        assert rec.proc.poll() is None, rec.stderr
        assert rec.worker_pids() == workers
        os.killpg(rec.proc.pid, signal.SIGTERM)
    assert rec.wait(60) == 0, rec.stderr
    assert sim.stop() == 0, sim.stderr
    assert no_open_files(out), list(out.rglob("*.open"))
    assert "Traceback" not in rec.stderr
    assert "sealing segments and stopping" in rec.stderr
    # No worker died: one incarnation per shard, stopped cleanly.
    assert sorted(s for _, s, _ in events(out, "worker_started")) == [0, 1]
    assert sorted(s for _, s, _ in events(out, "worker_stopping")) == [0, 1]
    result = compare_with_sent_log(out, sent)
    assert result["connections"] == 2 and result["messages"] > 0, result
    if relay:
        assert "live hub stopped" in rec.stderr, rec.stderr


# --- the console going away --------------------------------------------------------------------------------


@pytest.mark.parametrize("console", ["pipe", "pty"])
def test_the_console_going_away_mid_run_is_survived_and_the_run_ends_cleanly(sim_process, tmp_path, console):
    """`ime-record … 2>&1 | head -1`, and a terminal that went away (writes fail with EIO)."""
    sent, out = tmp_path / "sent", tmp_path / "out"
    sim = sim_process("--contracts", "4", "--rate", "1000", "--sent-log", str(sent), "--drop-every", "1")
    args = [sys.executable, "-m", "recorder.cli.record", "--ids", ",".join(sim.info["ids"]), "--out", str(out),
            "--status-interval", "1", *sim_args(sim)]
    env = {**os.environ, **creds(sim)}
    if console == "pipe":
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does after its line
    else:
        master, slave = pty.openpty()
        proc = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        os.close(slave)
        first = os.read(master, 200)
        os.close(master)  # the terminal is gone: writes to it fail
    try:
        assert first
        gone_ns = time.time_ns()
        # Status lines (every second) and worker log lines (the sim drops connections every second) now fail.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            recorded_after = [ts for ts, _, _, _, kind, _ in records(out, running=True)
                              if kind == RecordKind.TEXT and ts > gone_ns + 3 * 10**9]
            if recorded_after or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"the recorder died with its console (exit {proc.returncode})"
        assert recorded_after, "recording went on after the console went away"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert sim.stop() == 0, sim.stderr
    assert no_open_files(out)
    assert sorted(s for _, s, _ in events(out, "worker_started")) == [0]
    compare_with_sent_log(out, sent)


def test_a_failed_run_whose_console_went_away_still_exits_1(tmp_path):
    """The exit code is all a script gets once `| head -1` took the log: a failure must not turn into exit 0."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "recorder.cli.record", "--ids", "1001", "--base-url",
                             "ws://127.0.0.1:9/x", "--duration", "3", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "IME_TOKEN": "x"},
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait(60) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert no_open_files(out)


# --- shards that never connect --------------------------------------------------------------------------------


class SelectiveProxy:
    """A TCP proxy in front of the simulator that hangs up on every upgrade naming a `dead` contract, so that the
    shard holding only those never connects, while every other connection goes through."""

    def __init__(self, target_port: int, dead: set[str]) -> None:
        self.target_port = target_port
        self.dead = dead
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                head += chunk
        target = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else ""
        if any(f"contract_id={c}" in target for c in self.dead) or not head:
            self.refused += 1
            conn.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        upstream.sendall(head)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_a_shard_that_never_connected_fails_the_run_and_is_named(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "30", "--rate", "500")
    live, dead = pick_by_shard(sim.info["ids"], 3, [3, 2])
    dead_shard = shard_of(dead[0], 3)
    port = int(sim.info["base_url"].split(":")[2].split("/")[0])
    proxy = SelectiveProxy(port, set(dead))
    try:
        base = sim.info["base_url"].replace(f":{port}/", f":{proxy.port}/")
        rec = recorder("--ids", ",".join(live + dead), "--shards", "3", "--out", str(tmp_path / "out"),
                       "--base-url", base, "--token-url", sim.info["token_url"], env=creds(sim))
        rec.wait_for("the feed accepted shard", 90)
        time.sleep(3)
        rec.signal(signal.SIGTERM)
        code = rec.wait(60)
    finally:
        proxy.close()
    assert proxy.refused >= 1
    assert code == 1, rec.stderr
    last = rec.stderr.strip().splitlines()[-1]
    assert last.startswith("ime-record: error: ") and "never connected" in last, last
    assert f"shard {dead_shard}" in last and ", ".join(dead) in last, last
    assert "Traceback" not in rec.stderr


# --- restarts ------------------------------------------------------------------------------------------------


def test_a_worker_killed_again_and_again_records_again_within_2s_each_time(sim_process, recorder, tmp_path):
    """docs/recording.md: a worker that dies is restarted within 0.1-2 s, from its death to the new worker recording."""
    out = tmp_path / "out"
    sim = sim_process("--contracts", "4", "--rate", "400")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(out), "--flush-ms", "20", *sim_args(sim),
                   env=creds(sim))
    rec.wait_for("the feed accepted shard 0's connection", 90)
    killed: list[int] = []
    for round_ in range(6):
        # The worker of this round has written its `worker_started` (it is recording): kill it.
        deadline = time.monotonic() + 30
        while len(events(out, "worker_started", running=True)) < round_ + 1:
            assert time.monotonic() < deadline, rec.stderr
            time.sleep(0.05)
        (victim,) = rec.worker_pids()
        killed.append(time.time_ns())
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while victim in rec.worker_pids() or not rec.worker_pids():
            assert time.monotonic() < deadline, rec.stderr
            time.sleep(0.02)
    deadline = time.monotonic() + 30
    while len(events(out, "worker_started", running=True)) < len(killed) + 1:
        assert time.monotonic() < deadline, rec.stderr
        time.sleep(0.05)
    rec.signal(signal.SIGTERM)
    assert rec.wait(60) == 0, rec.stderr
    starts = [ts for ts, _, _ in events(out, "worker_started")]
    back_after = [(next(ts for ts in starts if ts > k) - k) / 1e9 for k in killed]
    assert max(back_after) <= 2.0, back_after
    assert "6 restarts" in rec.stderr
