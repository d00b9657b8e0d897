"""ime-record --relay end to end: real recorder, hub and worker processes, real picows/websockets/node clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable

import orjson
import pytest
from live_util import assert_suffix_per_contract, metrics_url, recorded_by_contract, relay_base
from record_util import compare_with_sent_log
from sim_util import NODE, Session, doc_client, node_has_ws, picows_session, run

from recorder.feed.endpoints import EndpointKind, build_url

pytestmark = pytest.mark.slow

JS_CLIENT = """
const WebSocket = require('ws');
const url = process.argv[process.argv.length - 2];  // the only changes: where the URL and the token come from
const token = process.argv[process.argv.length - 1];
const ws = new WebSocket(url, { headers: { Authorization: token } });
ws.on('open', () => { console.log('Connected'); });
ws.on('message', (message) => {
  const data = JSON.parse(message);
  const identifier = data.contractId || data.contractName;
  console.log(data.timestamp, identifier, data.channel);
});
ws.on('close', () => { console.log('Disconnected'); });
"""


def sim_args(sim) -> list[str]:
    return ["--base-url", sim.info["base_url"], "--token-url", sim.info["token_url"]]


def creds(sim, **extra: str) -> dict[str, str]:
    return {"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"], **extra}


async def _js_client(url: str, token: str, lines: list[str]) -> list[str]:
    """Run the API document's JavaScript example; `lines` fills as it prints (returned when it exits)."""
    proc = await asyncio.create_subprocess_exec(NODE or "node", "-e", JS_CLIENT, url, token,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    async for line in proc.stdout:
        lines.append(line.decode().rstrip("\n"))
    await proc.wait()
    return lines


@pytest.mark.parametrize("kind", [EndpointKind.ID, EndpointKind.NAME])
def test_twenty_clients_get_exactly_what_was_recorded_and_refusals_are_1008(sim_process, recorder, tmp_path, kind):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "12", "--rate", "3000", "--seed", "7", "--sent-log", str(sent))
    contracts = list(sim.info["ids"] if kind is EndpointKind.ID else sim.info["names"])
    listing = tmp_path / "contracts.txt"
    listing.write_text("\n".join(contracts) + "\n", encoding="utf-8")
    rec = recorder(f"--{kind.value}s-file", str(listing), "--shards", "2", "--out", str(out), "--relay",
                   "127.0.0.1:0", "--flush-ms", "50", *sim_args(sim), env=creds(sim, IME_RELAY_TOKEN="relay-s3cret"))
    base = relay_base(rec)
    assert "relay-s3cret" not in rec.stderr
    rng = random.Random(11)
    subsets = [tuple(rng.sample(contracts, rng.randint(1, 4))) for _ in range(20)]
    other = EndpointKind.NAME if kind is EndpointKind.ID else EndpointKind.ID
    js = node_has_ws()

    live: dict[int, Session] = {}

    def watching(i: int) -> Callable[[Session], bool]:
        def done(session: Session) -> bool:
            live[i] = session
            return False
        return done

    async def scenario():
        clients = [asyncio.ensure_future(picows_session(build_url(base, kind, s), "relay-s3cret", watching(i),
                                                        timeout=60))
                   for i, s in enumerate(subsets)]
        doc = asyncio.ensure_future(doc_client(build_url(base, kind, [contracts[0]]), "relay-s3cret", 200))
        js_seen: list[str] = []
        node = asyncio.ensure_future(_js_client(build_url(base, kind, [contracts[1]]), "relay-s3cret", js_seen)) \
            if js else None
        bad_token = await picows_session(build_url(base, kind, contracts[:2]), "wrong", timeout=5)
        no_token = await picows_session(build_url(base, kind, contracts[:2]), None, timeout=5)
        unknown = await picows_session(build_url(base, kind, [contracts[0], "99999"]), "relay-s3cret", timeout=5)
        wrong_endpoint = await picows_session(build_url(base, other, ["1001"]), "relay-s3cret", timeout=5)
        # The hub yields the CPU to the workers: wait until the clients have material, not a fixed time.
        deadline = asyncio.get_running_loop().time() + 60
        while not (sum(len(s.frames) for s in live.values()) > 3000 and doc.done() and (not js or len(js_seen) > 20)):
            assert asyncio.get_running_loop().time() < deadline, \
                f"after 60 s: {sum(len(s.frames) for s in live.values())} frames to the clients, the Python example " \
                f"{'done' if doc.done() else 'not done'}, the JavaScript example printed {len(js_seen)} lines"
            await asyncio.sleep(0.1)
        rec.signal(signal.SIGTERM)
        sessions = await asyncio.gather(*clients)
        return sessions, await doc, (await node if node else None), (bad_token, no_token, unknown, wrong_endpoint)

    sessions, doc_seen, js_lines, refused = run(scenario(), 90)
    assert rec.wait(30) == 0, rec.stderr
    sim.stop()
    compare_with_sent_log(out, sent)  # the relay took nothing from the recording
    recorded = recorded_by_contract(out)
    total = 0
    for subset, session in zip(subsets, sessions, strict=True):
        assert session.close_code == 1001, (session.close_code, session.close_reason)
        total += assert_suffix_per_contract(session.texts(), recorded, subset)
    assert total > 2000
    for session in refused:
        assert session.close_code == 1008 and not session.texts()
    assert "unknown contract: 99999" in refused[2].close_reason
    # The API document's Python example, unchanged apart from URL and token.
    assert len(doc_seen) == 200
    expected = [orjson.loads(p) for p in recorded[contracts[0]]]
    got = [m[3] for m in doc_seen]
    start = expected.index(got[0])
    assert got == expected[start:start + 200]
    if js_lines is not None:
        assert js_lines[0] == "Connected" and js_lines[-1] == "Disconnected"
        expected = [orjson.loads(p) for p in recorded[contracts[1]]]
        shown = [f"{m['timestamp']} {contracts[1]} IME Stream" for m in expected]
        body = js_lines[1:-1]
        assert body and body == shown[shown.index(body[0]):]


def _stalled_client(host: str, port: int, path: str, token: str) -> socket.socket:
    """A client that completes the upgrade and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: {token}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_stalled_client_is_cut_and_counted_while_others_and_the_recording_go_on(sim_process, recorder, tmp_path):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "6", "--rate", "4000", "--seed", "3", "--sent-log", str(sent))
    ids = sim.info["ids"]
    rec = recorder("--ids", ",".join(ids), "--out", str(out), "--relay", "127.0.0.1:0", "--relay-client-kib", "2048",
                   "--metrics-port", "0", "--status-interval", "1", *sim_args(sim), env=creds(sim))
    base = relay_base(rec)
    metrics = metrics_url(rec)
    host, port = base.split("//")[1].split("/")[0].rsplit(":", 1)
    path = build_url(base, EndpointKind.ID, ids).split(f":{port}", 1)[1]
    stalled = _stalled_client(host, int(port), path, "any")

    async def scenario():
        good = asyncio.ensure_future(picows_session(build_url(base, EndpointKind.ID, ids), None, timeout=60))
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics, timeout=5).read().decode())
            if "ime_recorder_relay_slow_clients_cut_total 1" in text:
                break
        await asyncio.sleep(1.5)
        rec.signal(signal.SIGTERM)
        return await good, text

    good, text = run(scenario(), 90)
    assert "ime_recorder_relay_slow_clients_cut_total 1" in text, text
    assert rec.wait(30) == 0, rec.stderr
    assert "1 slow cut" in rec.stderr
    # The stalled client's connection was closed by the relay: reading now ends in EOF (or a reset).
    stalled.settimeout(10)
    ended = False
    try:
        while stalled.recv(1 << 16):
            pass
        ended = True
    except ConnectionResetError:
        ended = True
    finally:
        stalled.close()
    assert ended
    sim.stop()
    compare_with_sent_log(out, sent)
    assert good.close_code == 1001
    assert assert_suffix_per_contract(good.texts(), recorded_by_contract(out), tuple(ids)) > 5000


def test_a_killed_hub_is_restarted_and_recording_never_notices(sim_process, recorder, tmp_path):
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "4", "--rate", "3000", "--sent-log", str(sent))
    ids = sim.info["ids"]
    rec = recorder("--ids", ",".join(ids), "--shards", "2", "--out", str(out), "--relay", "127.0.0.1:0",
                   *sim_args(sim), env=creds(sim))
    base = relay_base(rec)
    hub_pid = int(re.search(r"hub pid (\d+)", rec.stderr)[1])
    # Recording first (record/timeslice.py): the hub and every thread of it run under SCHED_IDLE, yielding the CPU to
    # the workers, whose threads all keep nice 0 (the writer is not niced below the live outputs).
    deadline = time.monotonic() + 30  # the relay can serve before the workers have started their writers
    while True:
        nices = rec.worker_thread_nices()  # (4 contracts may all hash to one shard: a shard with none has no worker)
        if nices and all(len(n) > 1 for n in nices.values()):
            break
        assert time.monotonic() < deadline, nices
        time.sleep(0.1)
    assert all(set(n) == {0} for n in nices.values()), nices
    assert {os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{hub_pid}/task")} == {os.SCHED_IDLE}
    time.sleep(1)
    os.kill(hub_pid, signal.SIGKILL)
    rec.wait_for("restarting in")
    deadline = time.monotonic() + 30
    while rec.stderr.count("live relay serving") < 2:
        assert time.monotonic() < deadline, rec.stderr
        time.sleep(0.1)
    base2 = re.findall(r"live relay serving (ws://\S+)", rec.stderr)[-1]
    assert base2 == base, "the restarted hub serves on the same address"
    new_hub = int(re.findall(r"hub pid (\d+)", rec.stderr)[-1])
    assert new_hub != hub_pid and os.sched_getscheduler(new_hub) == os.SCHED_IDLE, "a restarted hub yields too"
    session = run(picows_session(build_url(base, EndpointKind.ID, ids[:2]), None, done=lambda s: len(s.texts()) > 200,
                                 timeout=20), 40)
    assert len(session.texts()) > 200
    time.sleep(1)
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    sim.stop()
    assert compare_with_sent_log(out, sent)["messages"] > 3000  # recording went on through the hub's death


def test_messages_that_never_reached_the_hub_cut_its_clients_and_the_recording_keeps_them(sim_process, recorder,
                                                                                                   tmp_path):
    """A stopped hub (as a starved one would be) makes the worker drop what it cannot hand over: the relay's
    clients are cut with a reason instead of silently missing those messages; a new client is served again."""
    sent = tmp_path / "sent"
    out = tmp_path / "out"
    sim = sim_process("--contracts", "6", "--rate", "8000", "--seed", "5", "--sent-log", str(sent))
    ids = sim.info["ids"]
    # After SIGCONT the hub passes on the ~16 MB the worker and the socket held before the gap: a client buffer
    # larger than that keeps the client from being cut as too slow first.
    rec = recorder("--ids", ",".join(ids), "--out", str(out), "--relay", "127.0.0.1:0", "--relay-client-kib",
                   "65536", "--metrics-port", "0", "--status-interval", "1", *sim_args(sim), env=creds(sim))
    base = relay_base(rec)
    metrics = metrics_url(rec)
    hub_pid = int(re.search(r"hub pid (\d+)", rec.stderr)[1])
    url = build_url(base, EndpointKind.ID, ids)

    async def scenario():
        first = asyncio.ensure_future(picows_session(url, None, timeout=90, keep_text=False))
        await asyncio.sleep(1.5)
        # ~6 MB/s of frames against the worker's 8 MiB buffer and the socket's: 8 s stopped overflows them.
        os.kill(hub_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(8)
        finally:
            os.kill(hub_pid, signal.SIGCONT)
        cut = await asyncio.wait_for(first, 60)
        second = await picows_session(url, None, done=lambda s: len(s.texts()) > 500, timeout=30)
        deadline = time.monotonic() + 20
        while True:  # the hub reports every second
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics, timeout=5).read().decode())
            if re.search(r"^ime_recorder_relay_gap_clients_cut_total [1-9]", text, re.M) or time.monotonic() > deadline:
                return cut, second, text
            await asyncio.sleep(0.5)

    cut, second, text = run(scenario(), 150)
    assert cut.close_code == 1013, (cut.close_code, cut.close_reason)
    assert re.fullmatch(r"the relay missed \d+ messages the recorder could not hand over \(CPU overload\); "
                        r"reconnect to resume", cut.close_reason), cut.close_reason
    assert len(second.texts()) > 500
    missed = float(re.search(r"^ime_recorder_live_worker_dropped_total (\S+)", text, re.M)[1])
    assert missed > 0, text
    assert re.search(r"^ime_recorder_relay_gap_clients_cut_total [1-9]", text, re.M), text
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    assert "cut for gaps" in rec.stderr and "not handed over by workers" in rec.stderr
    assert "could not hand" in rec.stderr and "relay clients were cut to reconnect" in rec.stderr
    sim.stop()
    compare_with_sent_log(out, sent)  # every message is recorded, including those the relay missed


@pytest.mark.parametrize(("args", "message"), [
    (["--relay", "localhost:http"], "bad --relay 'localhost:http': give [HOST:]PORT"),
    (["--publish", "http://127.0.0.1:4222"], "--publish needs a URL such as nats://"),
    (["--relay", "0", "--nats-max-age", "forever"], "bad --nats-max-age 'forever'"),
])
def test_bad_live_options_are_one_line_exit_2(recorder, tmp_path, args, message):
    rec = recorder("--ids", "1001", "--out", str(tmp_path / "out"), *args, env={"IME_TOKEN": "x"})
    assert rec.wait(30) == 2
    lines = rec.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ime-record: error: "), rec.stderr
    assert message in rec.stderr and "Traceback" not in rec.stderr


def test_a_bad_relay_option_with_demo_starts_nothing(recorder, tmp_path):
    """The options are checked before the demo simulator starts: one line, exit 2, no simulator ran."""
    rec = recorder("--demo", "--relay", "nonsense", "--out", str(tmp_path / "out"))
    assert rec.wait(30) == 2
    lines = rec.stderr.strip().splitlines()
    assert lines == ["ime-record: error: bad --relay 'nonsense': give [HOST:]PORT, e.g. 127.0.0.1:8765"], rec.stderr
    assert "simulator" not in rec.stderr and "ime-sim" not in rec.stderr


def _close_code(data: bytes) -> int | None:
    """The code of the CLOSE frame among the (unmasked) frames a server sent, None without one."""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size = int.from_bytes(data[at:at + width], "big")
            at += width
        if opcode == 0x8:
            return int.from_bytes(data[at:at + 2], "big") if size >= 2 else None
        at += size
    return None


def _bad_frame_client(host: str, port: int, path: str) -> bytes:
    """A client that upgrades, then sends a frame with a reserved opcode (a protocol error); what it got back."""
    sock = socket.create_connection((host, port), timeout=30)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(b"\x83\x80\x00\x00\x00\x00")  # FIN, opcode 0x3 (reserved), masked, empty
        got = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                got += chunk
        return got
    finally:
        sock.close()


def test_clients_that_break_the_protocol_are_counted_and_logged_throttled(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "4", "--rate", "500")
    ids = sim.info["ids"]
    rec = recorder("--ids", ",".join(ids), "--out", str(tmp_path / "out"), "--relay", "127.0.0.1:0",
                   "--metrics-port", "0", "--status-interval", "1", *sim_args(sim), env=creds(sim))
    base = relay_base(rec)
    metrics = metrics_url(rec)
    host, port = base.split("//")[1].split("/")[0].rsplit(":", 1)
    path = build_url(base, EndpointKind.ID, ids[:1]).split(f":{port}", 1)[1]
    for _ in range(5):
        answer = _bad_frame_client(host, int(port), path)
        assert _close_code(answer) == 1002, answer[-200:]  # after whatever data the relay sent before
    deadline = time.monotonic() + 30  # the hub reports every second (later on a loaded machine: it yields)
    while True:
        text = urllib.request.urlopen(metrics, timeout=5).read().decode()
        if "ime_recorder_relay_client_protocol_errors_total 5" in text or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "ime_recorder_relay_client_protocol_errors_total 5" in text, text
    # The client's fault: a WARNING for the first, the rest held for a summary (at most one a minute); no ERROR line.
    lines = [line for line in rec.stderr.splitlines() if "broke the WebSocket protocol" in line]
    assert len(lines) == 1 and " WARNING live: a client broke the WebSocket protocol: Received frame with " \
        "invalid opcode=0x3 (closed with 1002)" in lines[0], rec.stderr
    assert " ERROR " not in rec.stderr, rec.stderr
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    # What was held back is summarised when the relay closes, not lost; the exit summary counts them all.
    summary = [line for line in rec.stderr.splitlines() if "broke the WebSocket protocol" in line]
    assert len(summary) == 2 and re.search(r"WARNING live: 4 more client\(s\) broke the WebSocket protocol in the last "
                                           r"\d+s .*; 5 since the start", summary[1]), summary
    assert "5 closed for protocol errors" in rec.stderr
