"""ime-record --publish and ime-replay --from-nats against real nats-server processes (JetStream, loopback)."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import orjson
import pytest
import xxhash
from live_util import metrics_url, recorded_payloads
from nats_util import NatsServer, cluster, needs_nats_server, stream_info, stream_messages, wait_jetstream
from record_util import compare_with_sent_log
from sim_util import run

from recorder.live.subjects import contract_token

pytestmark = [pytest.mark.slow, needs_nats_server]


@pytest.fixture
def nats_servers():
    started: list[NatsServer] = []
    yield started
    for s in started:
        s.kill()


def sim_args(sim) -> list[str]:
    return ["--base-url", sim.info["base_url"], "--token-url", sim.info["token_url"]]


def creds(sim) -> dict[str, str]:
    return {"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]}


def test_two_recorders_publish_each_message_once_with_digest_ids_and_receive_times(sim_process, recorder,
                                                                                   nats_servers, tmp_path):
    server = NatsServer(tmp_path).start()
    nats_servers.append(server)
    sim = sim_process("--contracts", "8", "--rate", "2000", "--seed", "9")
    ids = ",".join(sim.info["ids"])
    recs = [recorder("--ids", ids, "--shards", str(i + 1), "--out", str(tmp_path / f"out{i}"), "--publish", server.url,
                     "--nats-max-age", "1h", *sim_args(sim), env=creds(sim)) for i in range(2)]
    # Both recording and publishing before the common window starts: on a loaded machine a start takes seconds.
    for rec in recs:
        rec.wait_for("the feed accepted shard", 60)
        rec.wait_for("connected to NATS", 60)
    time.sleep(3)
    for rec in recs:
        rec.signal(signal.SIGTERM)
    for rec in recs:
        assert rec.wait(30) == 0, rec.stderr
    # As multisets: the feed itself repeats a message now and then (same contract, book and microsecond), and
    # both the recordings and the stream keep each repeat; a message two recorders saw is stored once.
    first, second = (Counter(recorded_payloads(tmp_path / f"out{i}")) for i in range(2))
    assert len(first & second) > 1000, "both recorders saw the same messages"
    msgs = run(stream_messages(server.url))
    payloads = [p for _, p, _ in msgs]
    stored = Counter(payloads)
    missing = sorted(orjson.loads(p)["timestamp"] for p in (first | second) - stored)
    assert not (stored - (first | second)), "a message is in the stream more often than any recorder saw it"
    assert stored == first | second, f"{len(missing)} missing: {missing[:2]}..{missing[-2:]}"
    seen: Counter[bytes] = Counter()
    for subject, payload, headers in msgs:
        repeat = seen[payload]
        seen[payload] += 1
        digest = xxhash.xxh3_128_digest(payload).hex()
        assert headers["Nats-Msg-Id"] == (digest if not repeat else f"{digest}-{repeat}")
        assert int(headers["Ime-Receive-Ns"]) > 1_700_000_000 * 10**9
        assert subject == f"ime.id.{contract_token(orjson.loads(payload)['contractId'])}"
    info = run(stream_info(server.url))
    assert info.config.max_age == 3600 and info.config.duplicate_window == 120
    # The consumer side: everything for one contract, from the start of the stream.
    c = sim.info["ids"][0]
    want = [p for p in payloads if orjson.loads(p)["contractId"] == c]
    out = subprocess.run([sys.executable, "-m", "recorder.cli.replay", "--from-nats", server.url, "--contract", c,
                          "--since", "all", "--format", "raw", "--count", str(len(want))],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == want


def test_nats_killed_and_restarted_loses_nothing_locally_and_the_publisher_resumes(sim_process, recorder,
                                                                                    nats_servers, tmp_path):
    server = NatsServer(tmp_path).start()
    nats_servers.append(server)
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "6", "--rate", "2000", "--sent-log", str(sent))
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(out), "--publish", server.url,
                   "--status-interval", "1", "--metrics-port", "0", *sim_args(sim), env=creds(sim))
    rec.wait_for("connected to NATS")
    metrics = metrics_url(rec)
    time.sleep(2)
    server.kill()
    rec.wait_for("disconnected from NATS")
    # The hub reports once a second and yields the CPU to the workers: wait for the state, not a fixed time.
    deadline = time.monotonic() + 30
    while True:
        down = urllib.request.urlopen(metrics, timeout=5).read().decode()
        found = re.search(r"^ime_recorder_nats_backlog ([0-9.e+]+)$", down, re.M)
        if "ime_recorder_nats_connected 0" in down and found and float(found[1]) > 1000:
            break  # messages wait in the backlog while NATS is down
        assert time.monotonic() < deadline, f"no backlog of 1000 messages with NATS down after 30 s:\n{down}"
        time.sleep(0.25)
    server.start()
    rec.wait_for("reconnected to NATS")
    time.sleep(2)
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    sim.stop()
    assert compare_with_sent_log(out, sent)["messages"] > 10_000  # recording never waited for NATS
    recorded = Counter(recorded_payloads(out))
    stored = Counter(p for _, p, _ in run(stream_messages(server.url)))
    assert not (stored - recorded), "a message is in the stream more often than it was recorded"
    assert stored == recorded, f"{sum((recorded - stored).values())} recorded messages missing from the stream"
    assert "NATS DOWN since" in rec.stderr  # the status line showed it, and since when
    # One warning when it went, one line when it came back; the summary after the clean stop is not "DOWN".
    assert len(_nats_warnings(rec.stderr)) == 1, _nats_warnings(rec.stderr)
    assert "disconnected from NATS" in _nats_warnings(rec.stderr)[0]
    assert re.search(r"WARNING live: reconnected to NATS at \S+ after \S+ unavailable", rec.stderr), rec.stderr
    assert "NATS stopped" in _summary(rec.stderr) and "DOWN" not in _summary(rec.stderr)


def test_three_node_cluster_with_a_node_killed_keeps_publishing_and_consuming(sim_process, recorder, nats_servers,
                                                                               tmp_path):
    nodes = cluster(tmp_path)
    for node in nodes:
        nats_servers.append(node.start())
    urls = ",".join(n.url for n in nodes)
    run(wait_jetstream(nodes[0].url), 60)
    sim = sim_process("--contracts", "6", "--rate", "1500")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(tmp_path / "out"), "--publish", urls,
                   "--nats-replicas", "3", *sim_args(sim), env=creds(sim))
    rec.wait_for("connected to NATS", 60)
    consumed = tmp_path / "consumed.raw"
    with open(consumed, "wb") as sink:
        consumer = subprocess.Popen([sys.executable, "-m", "recorder.cli.replay", "--from-nats", urls, "--since", "all",
                                     "--format", "raw"], stdout=sink, stderr=subprocess.PIPE)
    try:
        time.sleep(2.5)
        info = run(stream_info(nodes[0].url))
        assert info.config.num_replicas == 3
        leader = info.cluster.leader
        victim = next(n for n in nodes if n.name == leader)
        victim.kill()
        killed_at = time.strftime("%H:%M:%S", time.gmtime())
        survivors = [n for n in nodes if n is not victim]
        # Publishing resumes once the survivors have elected a stream leader: seconds on a quiet machine, but one
        # loaded run of the suite measured 35 s (nats-server's own election). Until then the recorder keeps what
        # is unconfirmed, so the test waits for the leader, then lets publishing go on before stopping.
        new_leader = None
        deadline = time.monotonic() + 90
        while new_leader in (None, leader) and time.monotonic() < deadline:
            time.sleep(0.5)
            with contextlib.suppress(Exception):
                new_leader = run(stream_info(survivors[0].url), 10).cluster.leader
        assert new_leader not in (None, leader), "the surviving nodes elected no stream leader in 90 s"
        time.sleep(3)
        rec.signal(signal.SIGTERM)
        assert rec.wait(60) == 0, rec.stderr
        recorded = Counter(recorded_payloads(tmp_path / "out"))
        payloads = [p for _, p, _ in run(stream_messages(survivors[0].url), 60)]
        stored = Counter(payloads)
        assert not (stored - recorded), "a message is in the stream more often than it was recorded"
        missing = sorted(orjson.loads(p)["timestamp"] for p in recorded - stored)
        assert stored == recorded, (f"{len(missing)} recorded messages missing from the stream: "
                                    f"{missing[:1]}..{missing[-1:]}, leader {leader} killed at {killed_at}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and consumed.read_bytes().count(b"\n") < len(payloads):
            time.sleep(0.2)
    finally:
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=15)
    lines = consumed.read_bytes().splitlines()
    assert consumer.returncode == 0, err
    assert Counter(lines) == recorded, "the consumer saw each message as often as it was recorded"


# --- what the operator sees (issue 21) ------------------------------------------------------------------------------

def _nats_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARNING live: NATS at " in line]


def _summary(stderr: str) -> str:
    """The exit summary (everything from "recorded for" on): what an operator reads after a stop."""
    return stderr[stderr.index("recorded for"):]


def test_unreachable_nats_is_one_warning_with_the_cause_and_exit_1_with_the_recording_complete(
        sim_process, recorder, tmp_path):
    from live_util import free_port

    sent = tmp_path / "sent"
    out = tmp_path / "out"
    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there: every attempt is refused
    sim = sim_process("--contracts", "4", "--rate", "1000", "--sent-log", str(sent))
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(out), "--publish", url, "--status-interval", "1",
                   *sim_args(sim), env=creds(sim))
    # A few seconds on a quiet machine (the first attempt is refused at once); the hub yields the CPU to the
    # workers, so a loaded one gets more room.
    rec.wait_for(f"NATS at {url} unavailable: cannot connect: connection refused", 60)
    first = time.monotonic()
    # nats-py retries every 0.5 s, each attempt refused: the warning is not repeated (at most once a minute).
    while time.monotonic() - first < 6:
        time.sleep(0.5)
    assert len(_nats_warnings(rec.stderr)) == 1, _nats_warnings(rec.stderr)
    # The time it went down carries its zone (Z: no --tz given), as every time shown.
    assert re.search(r"status: live hub running; NATS DOWN since \d\d:\d\d:\d\dZ \(cannot connect: "
                     r"connection refused\)", rec.stderr), rec.stderr
    rec.signal(signal.SIGTERM)
    # --publish left every message unconfirmed: not exit 0, with one line saying so and that the recording is whole.
    assert rec.wait(30) == 1, rec.stderr
    sim.stop()
    recorded = compare_with_sent_log(out, sent)["messages"]
    assert recorded > 1000
    summary = _summary(rec.stderr)
    assert "NATS DOWN at stop since" in summary and "(cannot connect: connection refused)" in summary, summary
    assert f"NATS did not confirm {recorded} of the {recorded} messages it should hold: {recorded} waiting when " \
           "the hub stopped (NATS unavailable: cannot connect: connection refused)" in summary, summary
    errors = [line for line in rec.stderr.splitlines() if line.startswith("ime-record: error:")]
    assert errors == [f"ime-record: error: NATS lacks {recorded} of the {recorded} messages --publish should have "
                      "stored (see above); the recording is not affected: each was recorded before it was handed "
                      "to the live hub"], rec.stderr
    assert "Traceback" not in rec.stderr


def test_a_nats_server_without_jetstream_is_named_as_such(sim_process, recorder, nats_servers, tmp_path):
    server = NatsServer(tmp_path, jetstream=False).start()
    nats_servers.append(server)
    sim = sim_process("--contracts", "4", "--rate", "500")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(tmp_path / "out"), "--publish", server.url,
                   *sim_args(sim), env=creds(sim))
    rec.wait_for(f"NATS at {server.url} unavailable: the server does not have JetStream enabled (start nats-server "
                 "with -js)", 60)
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 1, rec.stderr
    assert "code=None" not in rec.stderr and "ServiceUnavailableError" not in rec.stderr, rec.stderr
    assert len(_nats_warnings(rec.stderr)) == 1, _nats_warnings(rec.stderr)
    assert "does not have JetStream enabled" in _summary(rec.stderr)


def test_a_clean_stop_with_everything_confirmed_is_not_down_and_exits_0(sim_process, recorder, nats_servers,
                                                                        tmp_path):
    server = NatsServer(tmp_path).start()
    nats_servers.append(server)
    out = tmp_path / "out"
    sim = sim_process("--contracts", "4", "--rate", "1500")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(out), "--publish", server.url,
                   *sim_args(sim), env=creds(sim))
    rec.wait_for("connected to NATS", 60)
    time.sleep(2)
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    recorded = len(recorded_payloads(out))
    stored = len(run(stream_messages(server.url)))
    assert stored == recorded > 1000
    summary = _summary(rec.stderr)
    assert "DOWN" not in summary, summary
    assert f"live hub stopped; NATS stopped, {stored} stored, backlog 0, 0 dropped" in summary, summary
    assert f"NATS confirmed all {stored} messages published" in summary, summary
    assert not _nats_warnings(rec.stderr), rec.stderr
