"""ime-record end to end: real supervisor and worker processes, real picows sockets to ime-sim, real files."""

from __future__ import annotations

import signal
import time
import urllib.request

import orjson
import pytest
from loss_bound import check_killed_tail, sent_times
from record_util import compare_with_sent_log, connections, pair_connections

from recorder.events import decode_event
from recorder.feed.message import parse_timestamp_ns
from recorder.model.record import RecordKind
from recorder.segment.reader import discover, open_segment

pytestmark = pytest.mark.slow


def sim_args(sim) -> list[str]:
    info = sim.info
    return ["--base-url", info["base_url"], "--token-url", info["token_url"]]


def creds(sim) -> dict[str, str]:
    return {"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]}


def events(out_dir, name=None):
    found = []
    for path in discover([out_dir]):
        for rec in open_segment(path).iter_records():
            if rec.kind == RecordKind.EVENT:
                e = decode_event(rec.payload)
                if name is None or e["event"] == name:
                    found.append((rec.shard, e))
    return found


def no_open_files(out_dir) -> bool:
    return not list(out_dir.rglob("*.open"))


def test_every_frame_sent_is_recorded_once_across_shards_drops_fragments_and_binary(sim_process, recorder, tmp_path):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "12", "--rate", "3000", "--seed", "5", "--sent-log", str(sent),
                      "--drop-every", "1.3", "--fragment-every", "0.4", "--fragment-parts", "4",
                      "--binary-every", "0.5", "--malformed-every", "0.7", "--ping-every", "0.3",
                      "--oversized-every", "1.1", "--oversized-bytes", "300000")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "3", "--out", str(out),
                   "--max-contracts-per-connection", "3", "--flush-ms", "50", *sim_args(sim), env=creds(sim))
    # The window starts once the feed has accepted a connection: a loaded machine can take seconds to start.
    rec.wait_for("the feed accepted shard", 60)
    time.sleep(5)
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    sim.stop()
    assert no_open_files(out)
    result = compare_with_sent_log(out, sent)
    assert result["connections"] >= 6  # 12 contracts on 4 connections, and reconnects after drops
    assert result["messages"] > 5000
    data, _ = connections(discover([out]))
    kinds = {kind for records in data.values() for kind, _ in records}
    assert kinds == {RecordKind.TEXT, RecordKind.BINARY}
    closed = [e for _, e in events(out, "closed")]
    assert any(e["code"] == 1006 for e in closed), "the sim's TCP drops show up as closed events"
    assert events(out, "reconnect")


def test_sigterm_exits_0_seals_everything_and_loses_nothing(sim_process, recorder, tmp_path):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "8", "--rate", "5000", "--sent-log", str(sent))
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "2", "--out", str(out), "--status-interval", "1",
                   *sim_args(sim), env=creds(sim))
    # Both shards recording before the window starts (a loaded machine can take seconds to start them).
    rec.wait_for("2/2 connections", 60)
    # Nothing in a worker is niced by default (record/timeslice.py: the live hub yields, never the recording).
    nices = rec.worker_thread_nices()
    assert len(nices) == 2 and all(set(n) == {0} for n in nices.values()), nices
    time.sleep(2)
    t0 = time.monotonic()
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    # issue 15: the worker's close handshake has a 3 s budget, then sealing; 10 s still proves it stopped by itself,
    # well before the supervisor's 15 s kill, with room for a loaded machine.
    assert time.monotonic() - t0 < 10, "stops within a few seconds"
    sim.stop()
    assert no_open_files(out)
    assert all(open_segment(p).sealed and not open_segment(p).verify() for p in discover([out]))
    # issue 15: every message sent is recorded (compare_with_sent_log); how many the sim managed to send in 3 s on
    # a loaded machine is a throughput figure, not this test's business.
    result = compare_with_sent_log(out, sent)
    assert result["connections"] == 2 and result["messages"] > 0, result
    assert "recorded for" in rec.stderr and "total:" in rec.stderr


def test_sigint_and_duration_also_stop_cleanly(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "4", "--rate", "500")
    # Long enough for a loaded machine to start and connect (it took over 3 s): a --duration that ends before any
    # connection was accepted is an error (exit 1, nothing recorded), not a clean stop.
    rec = recorder("--ids", "1001,1002,1003,1004", "--out", str(tmp_path / "a"), "--duration", "6", *sim_args(sim),
                   env=creds(sim))
    assert rec.wait(30) == 0, rec.stderr
    assert "--duration 6s reached" in rec.stderr
    rec2 = recorder("--ids", "1001", "--out", str(tmp_path / "b"), *sim_args(sim), env=creds(sim))
    rec2.wait_for("the feed accepted shard", 60)
    time.sleep(1)
    rec2.signal(signal.SIGINT)
    assert rec2.wait(30) == 0, rec2.stderr
    assert no_open_files(tmp_path / "a") and no_open_files(tmp_path / "b")


def test_sigkill_of_a_worker_restarts_it_recovers_its_file_and_other_shards_see_no_gap(sim_process, recorder,
                                                                                        tmp_path):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "12", "--rate", "4000", "--sent-log", str(sent))
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "3", "--out", str(out), "--flush-ms", "50",
                   "--status-interval", "1", *sim_args(sim), env=creds(sim))
    # Every shard connected and writing its file before the kill: a worker killed before it opened a file leaves
    # nothing to recover (a loaded machine took seconds to start them).
    rec.wait_for("3/3 connections", 60)
    workers = rec.worker_pids()
    assert len(workers) == 3
    time.sleep(1)
    victim = workers[1]
    import os

    killed_ns = time.time_ns()
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    rec.wait_for("restarting in")
    # issue 15: a correctness bound (the restart happens, after the short first delay); the restart-delay figure
    # itself is not a test's business on a loaded machine.
    while len(rec.worker_pids()) < 3 and time.monotonic() - killed_at < 10:
        time.sleep(0.05)
    assert len(rec.worker_pids()) == 3, "the killed worker is back"
    rec.wait_for("recovered", timeout=30)  # a wait, not a figure: a heavily loaded machine once took over 15 s
    time.sleep(2)
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    sim.stop()
    assert no_open_files(out)
    files = discover([out])
    reasons = [open_segment(p).seal.get("reason") for p in files]
    assert "recovered" in reasons
    for p in files:
        assert open_segment(p).verify() == []
    # The other shards' connections were never interrupted: exactly one opened and one closed each, and
    # every message the sim sent them is in the recording.
    data, opened = connections(files)
    per_shard: dict[int, int] = {}
    for shard, _, _ in opened:
        per_shard[shard] = per_shard.get(shard, 0) + 1
    assert sorted(per_shard.values()) == [1, 1, 2]
    sent_data, sent_opened = connections(discover([sent]))
    pairs = pair_connections(sent_opened, opened)
    for key in sent_opened:
        rec_key = pairs[key]
        if per_shard[rec_key[0]] == 1:
            assert data[rec_key] == sent_data[key]
        else:
            # The killed worker lost at most its last unflushed frame (≤ --flush-ms) of this connection.
            got = data[rec_key]
            assert got == sent_data[key][: len(got)]
            # issue 15: the bound is what --flush-ms 50 implies at this connection's measured rate (loss_bound.py);
            # the restarted worker's new connection loses nothing.
            times = sent_times(sent, key[2])
            if times and times[0] > killed_ns:
                assert got == sent_data[key]
            else:
                check_killed_tail(times, len(got), killed_ns, flush_ms=50)


def test_an_invalid_contract_is_found_excluded_and_the_rest_recorded(sim_process, recorder, tmp_path):
    out = tmp_path / "out"
    sim = sim_process("--contracts", "6", "--rate", "600")
    ids = ["1001", "1002", "9999", "1003", "1004", "1005", "1006"]
    rec = recorder("--ids", ",".join(ids), "--out", str(out), "--duration", "6", *sim_args(sim), env=creds(sim))
    assert rec.wait(40) == 0, rec.stderr
    assert "refuses contract 9999" in rec.stderr
    rejected = [e for _, e in events(out, "rejected")]
    assert [e["contracts"] for e in rejected] == [["9999"]]
    data, _ = connections(discover([out]))
    recorded = {p.split(b'"contractId":"')[1].split(b'"')[0].decode() for msgs in data.values() for _, p in msgs}
    assert recorded == {"1001", "1002", "1003", "1004", "1005", "1006"}


def test_bad_token_exits_1_with_a_clear_message_after_bounded_attempts(sim_process, recorder, tmp_path):
    """A fixed bad token, 50 contracts on 4 shards: one probe per shard decides, never a bisection."""
    sim = sim_process("--contracts", "50", "--rate", "100")
    ids = ",".join(sim.info["ids"])
    rec = recorder("--ids", ids, "--out", str(tmp_path / "out"), "--shards", "4", *sim_args(sim),
                   env={"IME_TOKEN": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bm90LWEtcmVhbC1zaWduYXR1cmU"})
    code = rec.wait(60)
    assert code == 1, rec.stderr
    last = rec.stderr.strip().splitlines()[-1]
    assert last.startswith("ime-record: error: ") and "token" in last
    assert "eyJ" not in rec.stderr  # the token never reaches a log line
    assert "looking for the refused contract" not in rec.stderr  # no bisection
    assert "excluded" not in rec.stderr
    assert "close 403" not in rec.stderr
    assert len(rec.stderr.strip().splitlines()) <= 20, rec.stderr
    stats = urllib.request.urlopen(sim.info["stats_url"], timeout=5).read()
    import orjson

    refused = orjson.loads(stats)["refused"]
    # Per shard: the first refusal, one retry with the (unrefreshable) token, one single-contract probe.
    assert sum(refused.values()) <= 3 * 4, refused


def test_bad_credentials_exit_1_without_retrying(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "3")
    rec = recorder("--ids", "1001", "--out", str(tmp_path / "out"), *sim_args(sim),
                   env={"IME_USERNAME": "demo", "IME_PASSWORD": "wrong-password"})
    assert rec.wait(30) == 1
    assert "refused the username/password (HTTP 401)" in rec.stderr
    assert "wrong-password" not in rec.stderr + rec.stdout
    assert "Traceback" not in rec.stderr


def test_token_revoked_mid_stream_is_replaced_and_recording_goes_on(sim_process, recorder, tmp_path):
    out = tmp_path / "out"
    sim = sim_process("--contracts", "3", "--rate", "300", "--revoke-after", "1.5")
    # 8 s: the revoke comes 1.5 s after the connection opens, which a loaded machine may delay by seconds.
    rec = recorder("--ids", "1001,1002,1003", "--out", str(out), "--duration", "8", *sim_args(sim), env=creds(sim))
    assert rec.wait(30) == 0, rec.stderr
    assert events(out, "token_refreshed")
    assert not events(out, "rejected")
    opened = events(out, "opened")
    assert len(opened) >= 2


def test_disk_full_stops_cleanly_and_keeps_sealed_files(sim_process, recorder, tmp_path):
    out = tmp_path / "out"
    sim = sim_process("--contracts", "6", "--rate", "4000")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "2", "--out", str(out), "--rotate-mb", "0.05",
                   "--flush-ms", "20", *sim_args(sim),
                   env={**creds(sim), "IME_RECORDER_FAULT_ENOSPC_AFTER": "300000"})
    assert rec.wait(40) == 1, rec.stderr
    last = rec.stderr.strip().splitlines()[-1]
    assert last.startswith("ime-record: error: disk full writing ") and "sealed segments are intact" in last
    assert "Traceback" not in rec.stderr
    files = discover([out])
    assert len(files) >= 4
    for p in files:
        seg = open_segment(p)
        assert seg.verify() == [], p
    assert no_open_files(out)


def test_metrics_endpoint_and_status_lines(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "8", "--rate", "800")
    # Rendezvous hashing puts 1005 and 1006 on shard 0 and the other six on shard 1.
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "2", "--out", str(tmp_path / "out"),
                   "--metrics-port", "0", "--status-interval", "1", *sim_args(sim), env=creds(sim))
    rec.wait_for("Prometheus metrics on http://127.0.0.1:")
    port = int(rec.stderr.split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
    # issue 15: poll until both shards report an open connection and messages (no fixed sleep on a loaded machine).
    deadline = time.monotonic() + 30
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        totals = [float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("ime_recorder_messages_total")]
        both_open = all(f'ime_recorder_connections_open{{shard="{i}"}} 1' in text for i in (0, 1))
        if (len(totals) == 2 and sum(totals) > 0 and both_open) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(totals) == 2 and sum(totals) > 0
    assert 'ime_recorder_connections_open{shard="0"} 1' in text
    assert 'ime_recorder_connections_open{shard="1"} 1' in text
    rec.wait_for("status: 2 shards, 2/2 connections")
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--ids-file", "missing.txt"], "missing.txt: no such file"),
    (["--ids", "1001", "--names", "A"], "give only one of"),
    ([], "no contracts"),
    (["--ids", "1001", "--base-url", "http://x"], "is not a WebSocket URL"),
    (["--ids", "1001", "--base-url", "not a url"], "'not a url' is not a WebSocket URL"),
    (["--ids", "1001", "--base-url", "ws://user:secret@h/x"], "must not hold credentials"),
    (["--ids", "1001"], "no credentials"),
])
def test_bad_usage_is_one_line_exit_2(recorder, tmp_path, args, message):
    rec = recorder(*args, "--out", str(tmp_path / "out"),
                   env={"IME_TOKEN": "", "IME_USERNAME": "", "IME_PASSWORD": ""})
    assert rec.wait(30) == 2
    assert message in rec.stderr
    assert rec.stderr.strip().count("\n") == 0, rec.stderr
    assert not (tmp_path / "out").exists()  # a refused run leaves no empty output directory behind


def test_malformed_ids_file_is_one_line_exit_2(recorder, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("1001\n1002 1003\n")
    rec = recorder("--ids-file", str(ids), "--out", str(tmp_path / "out"), env={"IME_TOKEN": "x"})
    assert rec.wait(30) == 2
    assert f"{ids}, line 2: an id cannot contain spaces" in rec.stderr
    assert rec.stderr.strip().count("\n") == 0
    ids.write_text("1001  # gold\n1002;\n")
    rec = recorder("--ids-file", str(ids), "--out", str(tmp_path / "out"), env={"IME_TOKEN": "x"})
    assert rec.wait(30) == 2
    assert rec.stderr.strip() == f"ime-record: error: {ids}, line 2: an id is digits only, e.g. 1001 ('#' starts a " \
                                 "comment): '1002;'"


def test_unusable_out_directory_is_one_line_exit_1_before_connecting(recorder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rec = recorder("--ids", "1001", "--base-url", "ws://127.0.0.1:9/x", "--out", str(blocker / "out"),
                   env={"IME_TOKEN": "x"})
    assert rec.wait(30) == 1
    assert rec.stderr.strip() == f"ime-record: error: cannot write {blocker / 'out'}: Not a directory"


def test_demo_mode_records_from_the_builtin_simulator(recorder, tmp_path):
    out = tmp_path / "demo"
    rec = recorder("--demo", "--shards", "2", "--duration", "3", "--out", str(out))
    assert rec.wait(60) == 0, rec.stderr
    files = discover([out])
    assert len(files) == 2 and all(open_segment(p).records > 100 for p in files)


def test_names_endpoint_with_persian_names_and_symbols(sim_process, recorder, tmp_path):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "6", "--rate", "1200", "--sent-log", str(sent))
    names = tmp_path / "names.txt"
    names.write_text("# IME contracts by name\n" + "\n".join(sim.info["names"]) + "\n", encoding="utf-8")
    rec = recorder("--names-file", str(names), "--shards", "2", "--out", str(out), "--duration", "3",
                   *sim_args(sim), env=creds(sim))
    assert rec.wait(30) == 0, rec.stderr
    sim.stop()
    compare_with_sent_log(out, sent)
    data, opened = connections(discover([out]))
    recorded = {orjson.loads(p)["contractName"] for msgs in data.values() for _, p in msgs}
    assert recorded == set(sim.info["names"])
    assert all("/contract/name?contract_name=" in e["url"] for e in opened.values())


def test_rejection_by_http_403_on_the_upgrade_is_handled_like_1008(sim_process, recorder, tmp_path):
    out = tmp_path / "out"
    sim = sim_process("--contracts", "4", "--rate", "400", "--reject", "handshake")
    rec = recorder("--ids", "1001,8888,1002", "--out", str(out), "--duration", "5", *sim_args(sim), env=creds(sim))
    assert rec.wait(40) == 0, rec.stderr
    rejected = [e for _, e in events(out, "rejected")]
    assert [(e["contracts"], e["code"]) for e in rejected] == [(["8888"], 403)]


def test_oversized_messages_become_events_not_crashes(sim_process, recorder, tmp_path):
    out = tmp_path / "out"
    sim = sim_process("--contracts", "2", "--rate", "200", "--oversized-every", "0.5", "--oversized-bytes", "200000")
    rec = recorder("--ids", "1001,1002", "--out", str(out), "--duration", "3", "--max-message-bytes", "100000",
                   *sim_args(sim), env=creds(sim))
    assert rec.wait(30) == 0, rec.stderr
    oversized = [e for _, e in events(out, "oversized")]
    assert oversized and all(e["size"] >= 200_000 and e["limit"] == 100_000 for e in oversized)
    assert all(len(e["head"]) <= 256 for e in oversized)
    assert len(events(out, "opened")) == 1  # the connection survived them
    data, _ = connections(discover([out]))
    assert all(len(p) <= 100_000 for msgs in data.values() for _, p in msgs)


def test_an_idle_connection_is_replaced_after_idle_timeout(sim_process, recorder, tmp_path):
    out = tmp_path / "out"
    sim = sim_process("--contracts", "2", "--rate", "200", "--stall-every", "1", "--stall-for", "3")
    # 8 s: the idle reconnect comes ~2.5 s after the connection opens, which a loaded machine may delay by seconds.
    rec = recorder("--ids", "1001,1002", "--out", str(out), "--duration", "8", "--idle-timeout", "1.5",
                   *sim_args(sim), env=creds(sim))
    assert rec.wait(30) == 0, rec.stderr
    idle = [e for _, e in events(out, "idle_timeout")]
    assert idle and idle[0]["idle_s"] == 1.5
    assert len(events(out, "opened")) >= 2


def test_a_path_hiccup_delivers_every_published_message_late_by_its_length(sim_process, recorder, tmp_path):
    out, published_dir, sent_dir = tmp_path / "out", tmp_path / "published", tmp_path / "sent"
    delay_for = 0.1
    sim = sim_process("--contracts", "6", "--rate", "2000", "--seed", "3", "--delay-every", "0.4",
                      "--delay-for", str(delay_for), "--published-log", str(published_dir), "--sent-log",
                      str(sent_dir))
    # 6 s: the fourth hiccup comes ~1.7 s after the connection opens, which a loaded machine may delay by seconds.
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(out), "--duration", "6", *sim_args(sim),
                   env=creds(sim))
    assert rec.wait(30) == 0, rec.stderr
    with urllib.request.urlopen(sim.info["stats_url"], timeout=5) as r:
        conns = orjson.loads(r.read())["connections"]
    assert sim.stop() == 0, sim.stderr
    delays = sum(c["faults"].get("delay", 0) for c in conns)
    assert delays >= 4 and all(c["dropped"] == 0 for c in conns), conns

    # Every message sent was recorded, and what was sent is an unbroken run of what the market published.
    compare_with_sent_log(out, sent_dir)
    published = [r.payload for p in discover([published_dir]) for r in open_segment(p).iter_records()
                 if r.kind == RecordKind.TEXT]
    sent_data, _ = connections(discover([sent_dir]))
    for msgs in sent_data.values():
        sent = [payload for _, payload in msgs]
        starts = [i for i, p in enumerate(published) if p == sent[0]]
        assert any(published[i:i + len(sent)] == sent for i in starts), "a message published meanwhile is missing"

    # Held messages keep their publish time: each hiccup shows as a burst of late receipts, the oldest about
    # delay_for late (loose above: a loaded machine adds its own scheduling delays).
    late: list[tuple[int, float]] = []
    for path in discover([out]):
        for r in open_segment(path).iter_records():
            if r.kind == RecordKind.TEXT:
                at = r.payload.find(b'"timestamp":"') + 13
                lateness = (r.ts_ns - parse_timestamp_ns(r.payload[at:at + 27].decode())) / 1e9
                if lateness >= 0.9 * delay_for:
                    late.append((r.ts_ns, lateness))
    late.sort()
    bursts: list[float] = []
    previous = None
    for ts, lateness in late:
        if previous is None or ts - previous > 50_000_000:
            bursts.append(lateness)
        else:
            bursts[-1] = max(bursts[-1], lateness)
        previous = ts
    assert len(bursts) >= delays - 1, (bursts, delays)
    worst = sorted(bursts)[len(bursts) // 2]  # the median hiccup
    assert 0.9 * delay_for <= worst <= delay_for + 0.15, bursts
