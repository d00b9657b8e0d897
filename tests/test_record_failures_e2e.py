"""Failures an operator must see: a wrong URL, a server that is not IME, a crash-looping worker."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.slow


class NotWebSocket:
    """A TCP server answering every request with a fixed response: what a wrong host or proxy does."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    self.requests += 1
                    conn.sendall(self.response)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize(("response", "said"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", "answered HTTP 200"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "does not speak WebSocket"),
])
def test_a_server_that_is_not_ime_is_a_warning_even_with_q_and_exit_1(recorder, tmp_path, response, said):
    server = NotWebSocket(response)
    try:
        rec = recorder("--ids", "1001", "--out", str(tmp_path / "out"), "--duration", "6", "-q",
                       "--base-url", f"ws://127.0.0.1:{server.port}/data-engine/ime/live/data/websocket",
                       env={"IME_TOKEN": "a.b.c"})
        assert rec.wait(40) == 1, rec.stderr
    finally:
        server.close()
    lines = rec.stderr.strip().splitlines()
    warnings = [line for line in lines if said in line]
    assert len(warnings) == 1, rec.stderr  # the first failure is reported; repeats are rate-limited
    assert "WARNING" in warnings[0] and "--base-url" in warnings[0]
    assert server.requests >= 3  # it kept trying all along
    assert lines[-1].startswith("ime-record: error: no connection to the feed was accepted")
    assert "Traceback" not in rec.stderr


def test_a_wrong_path_is_an_error_and_exit_1_after_a_few_attempts(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "2")
    base = sim.info["base_url"].replace("/data-engine/ime/live/data/websocket", "/wrong/path")
    rec = recorder("--ids", "1001", "--out", str(tmp_path / "out"), "--base-url", base, "--token-url",
                   sim.info["token_url"], "-q",
                   env={"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]})
    assert rec.wait(40) == 1, rec.stderr
    lines = rec.stderr.strip().splitlines()
    assert "ERROR" in lines[0] and "HTTP 404" in lines[0]
    assert lines[-1].startswith("ime-record: error: the server answered HTTP 404")
    assert "3 times in a row" in lines[-1]
    assert sum("HTTP 404" in line for line in lines) <= 3


def test_a_crash_looping_worker_is_back_within_seconds_each_time_and_each_death_is_explained(sim_process, recorder,
                                                                                           tmp_path):
    sim = sim_process("--contracts", "4", "--rate", "400")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(tmp_path / "out"), "--base-url",
                   sim.info["base_url"], "--token-url", sim.info["token_url"],
                   env={"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]})
    # Killed only once the feed has accepted it: a run in which nothing was ever accepted exits 1 by design.
    rec.wait_for("the feed accepted shard 0's connection", timeout=30)
    back_after = []
    for _ in range(4):
        (victim,) = rec.worker_pids()
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # Generous for a loaded machine, but an exponential restart delay (×4 from 0.1 s: 26 s by the 4th
        # crash) or an hour-long one fails it.
        while time.monotonic() - killed < 12:
            pids = rec.worker_pids()
            if pids and pids[0] != victim:
                break
            time.sleep(0.05)
        back_after.append(time.monotonic() - killed)
        assert back_after[-1] < 12, back_after
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0, rec.stderr
    deaths = re.findall(r"shard 0 worker \(pid \d+\) was killed by signal 9 .*restarting in ([\d.]+)s \(restart (\d)\)",
                        rec.stderr)
    assert [int(n) for _, n in deaths] == [1, 2, 3, 4], rec.stderr
    assert max(float(d) for d, _ in deaths) <= 2.0
    assert "4 restarts" in rec.stderr  # the exit summary counts them


def test_a_frozen_worker_shows_as_stale_with_no_rate_and_down_in_metrics(sim_process, recorder, tmp_path):
    """SIGSTOP one worker: its own line says stale (not the last rate it reported), metrics say it is down."""
    import urllib.request

    sim = sim_process("--contracts", "8", "--rate", "800")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--shards", "2", "--out", str(tmp_path / "out"),
                   "--metrics-port", "0", "--status-interval", "1", "--base-url", sim.info["base_url"],
                   "--token-url", sim.info["token_url"],
                   env={"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]})
    rec.wait_for("Prometheus metrics on http://127.0.0.1:")
    port = int(rec.stderr.split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
    rec.wait_for("status: 2 shards, 2/2 connections", timeout=30)

    def up() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("ime_recorder_up{")}

    assert up() == {"0": 1.0, "1": 1.0}
    victim = rec.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        mark = len(rec.stderr)
        deadline = time.monotonic() + 20
        while "STALE" not in rec.stderr[mark:] and time.monotonic() < deadline:
            time.sleep(0.2)
        line = next(x for x in rec.stderr[mark:].splitlines() if "STALE" in x)
        assert re.search(r"\(1 STALE, no report for >3s: shard \d\)", line), line
        assert sorted(up().values()) == [0.0, 1.0]
    finally:
        os.kill(victim, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while up() != {"0": 1.0, "1": 1.0} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert up() == {"0": 1.0, "1": 1.0}
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0


def test_recover_refuses_the_files_a_running_recorder_is_writing(recorder, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out"
    rec = recorder("--demo", "--duration", "6", "--out", str(out))
    deadline = time.monotonic() + 20
    while not list(out.rglob("*.zst.open")) and time.monotonic() < deadline:
        time.sleep(0.1)
    open_files = list(out.rglob("*.zst.open"))
    assert open_files
    segments = str(Path(sys.executable).parent / "ime-segments")
    proc = subprocess.run([segments, "recover", str(out)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "being written by a running ime-record" in proc.stderr and proc.stderr.count("\n") == 1
    assert all(p.exists() for p in open_files)  # untouched
    assert rec.wait(40) == 0, rec.stderr
    verify = subprocess.run([segments, "verify", "-q", str(out)], capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr
