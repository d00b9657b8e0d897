"""ime-sim as a real child process: the ready file, both clients, the token endpoint, signals, usage errors."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import pytest
from picows import WSMsgType
from sim_util import doc_client, picows_session, run

from recorder.feed.endpoints import build_url
from recorder.feed.token import encode_token_request, parse_token_response

IME_SIM = Path(sys.executable).parent / "ime-sim"
READY_KEYS = {"pid", "host", "port", "http_port", "base_url", "token_url", "stats_url", "username", "password",
              "token", "ids", "names", "id_url", "name_url", "rate", "seed", "reject"}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_child_process_serves_the_document_client_and_picows(sim_process):
    sim = sim_process("--contracts", "6", "--rate", "3000", "--seed", "9")
    info = sim.info
    assert set(info) == READY_KEYS and info["pid"] == sim.proc.pid
    assert info["base_url"] == f"ws://127.0.0.1:{info['port']}/data-engine/ime/live/data/websocket"
    assert info["token_url"] == f"http://127.0.0.1:{info['http_port']}/auth/user/token/issue"
    assert info["ids"] == [str(1001 + i) for i in range(6)] and len(set(info["names"])) == 6

    req = urllib.request.Request(info["token_url"], encode_token_request(info["username"], info["password"]),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        token = parse_token_response(resp.read())

    async def go() -> None:
        by_id = await doc_client(info["id_url"], token, 30)
        assert {ident for _, ident, _, _ in by_id} <= set(info["ids"][:3])
        assert all("contractId" in p and "contractName" not in p for *_, p in by_id)
        by_name = await doc_client(build_url(info["base_url"], "name", info["names"]), info["token"], 30)
        assert len({ident for _, ident, _, _ in by_name}) > 1
        assert {ident for _, ident, _, _ in by_name} <= set(info["names"])
        assert all("contractName" in p and "contractId" not in p for *_, p in by_name)
        for timestamp, _, channel, payload in by_id + by_name:
            assert channel == "IME Stream" and len(timestamp) == 27 and timestamp.endswith("Z")
            assert set(payload["data"]) == {"BestLimit", "Aggregate", "AllowedPriceRange", "ContractInfo"}
        session = await picows_session(info["name_url"], token, lambda s: len(s.texts()) >= 20)
        assert len(session.texts()) >= 20 and {f.msg_type for f in session.frames} == {WSMsgType.TEXT}
        refused = await picows_session(info["id_url"], "forged")
        assert (refused.close_code, refused.close_reason) == (1008, "invalid token")

    run(go())
    stats = get_json(info["stats_url"])
    assert stats["totals"]["connections"] == 3 and stats["refused"] == {"invalid token": 1}
    assert sim.stop(signal.SIGTERM) == 0
    assert info["base_url"] in sim.stdout and info["token"] in sim.stdout  # the banner shows the demo token
    err = sim.stderr
    assert "ime-sim: stopped after" in err and "3 connection(s)" in err and "#1 id x3" in err
    assert info["token"] not in err and token not in err and info["password"] not in err
    assert "Traceback" not in err


def test_reject_handshake_and_sigint(sim_process):
    sim = sim_process("--contracts", "2", "--reject", "handshake", "--token", "fixed-token-123")
    info = sim.info
    assert info["token"] == "fixed-token-123" and info["reject"] == "handshake"

    async def go() -> None:
        import websockets

        with pytest.raises(websockets.InvalidStatus) as exc:
            await doc_client(info["id_url"], "wrong-token", 1)
        assert exc.value.response.status_code == 403
        assert json.loads(exc.value.response.body) == {"error": "invalid token"}
        assert len(await doc_client(info["id_url"], "fixed-token-123", 5)) == 5

    run(go())
    assert sim.stop(signal.SIGINT) == 0


def test_drop_fault_in_the_child_process(sim_process):
    sim = sim_process("--contracts", "3", "--rate", "4000", "--drop-every", "0.5", "-q")
    session = run(picows_session(sim.info["id_url"], sim.info["token"], timeout=5))
    assert session.disconnected_at is not None and session.close_code is None
    (conn,) = get_json(sim.info["stats_url"])["connections"]
    assert conn["faults"] == {"drop": 1} and conn["sent"] == len(session.texts()) > 1000


def test_duration_stops_by_itself(tmp_path):
    ready = tmp_path / "ready.json"
    started = time.monotonic()
    proc = subprocess.run([str(IME_SIM), "--port", "0", "--http-port", "0", "--duration", "0.5", "--ready-file",
                           str(ready), "-q"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0 and time.monotonic() - started < 10
    assert json.loads(ready.read_text())["port"] > 0
    # The market published all the same (about 1000/s by default), though nobody ever connected.
    m = re.search(r"ime-sim: stopped after 0\.5s: the market published (\d+) messages; 0 connection\(s\)",
                  proc.stderr)
    assert m and 200 < int(m[1]) <= 600, proc.stderr
    assert not list(tmp_path.glob(".ready.json.*"))  # the temporary file was renamed, not left behind


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "-1"], "--rate"),
    (["--contracts", "0"], "--contracts"),
    (["--bogus"], "No such option"),
    (["--delay-every", "0"], "--delay-every"),
    (["--delay-every", "0.5", "--delay-for", "0"], "delay-for must be positive"),
    (["--delay-for", "-0.02"], "delay-for must be positive"),
    (["--reject", "maybe"], "--reject"),
    (["--close-every", "1", "--close-code", "1005"], "close code 1005 cannot be sent"),
    (["--drop-every", "0"], "--drop-every"),
    (["--ready-file", "/nonexistent-dir/ready.json"], "does not exist"),
])
def test_bad_usage_is_one_line_and_exit_2(args, message):
    proc = subprocess.run([str(IME_SIM), *args], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ime-sim: error: ") and message in lines[0]


def test_port_in_use_is_a_runtime_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([str(IME_SIM), "--port", str(port), "--duration", "1"], capture_output=True, text=True,
                              timeout=20)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ime-sim: error: ") and "in use" in lines[0]


def test_help_lists_the_fault_options():
    proc = subprocess.run([str(IME_SIM), "--help"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0
    for option in ("--drop-every", "--close-code", "--stall-for", "--malformed-every", "--binary-every",
                   "--oversized-bytes", "--fragment-every", "--ping-every", "--revoke-after", "--ready-file",
                   "--reject", "--token-ttl", "--burst", "--repeat-every", "--repeat-after"):
        assert option in proc.stdout


def test_every_option_has_help_text():
    from recorder.cli.sim import cli

    options = [p for p in cli.params if isinstance(p, click.Option)]
    assert len(options) > 25
    missing = [p.opts[0] for p in options if not p.help]
    assert missing == [], f"options without help: {missing}"
