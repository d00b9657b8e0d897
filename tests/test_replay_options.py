"""ime-replay options that only apply to --serve, given without it, are refused in one line; --version."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from test_replay_e2e import make_recording, replay


@pytest.mark.parametrize(("args", "flag"), [
    (["--token", "abc"], "--token"),
    (["--start", "now"], "--start"),
    (["--start", "first-client"], "--start"),  # the default value, given explicitly, is still a mistake
    (["--send-timeout", "3"], "--send-timeout"),
])
def test_serve_only_options_without_serve_are_one_line_exit_2(tmp_path, args, flag):
    make_recording(tmp_path, span_s=0.05)
    out = replay(str(tmp_path), *args, "--speed", "max")
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert lines == [f"ime-replay: error: {flag} only applies with --serve [HOST:]PORT; add --serve or drop {flag}"]
    assert out.stdout == b""


def test_the_token_from_the_environment_does_not_stop_a_stdout_replay(tmp_path):
    make_recording(tmp_path, span_s=0.05)
    out = subprocess.run([sys.executable, "-m", "recorder.cli.replay", str(tmp_path), "--speed", "max", "--format",
                          "raw"], capture_output=True, timeout=60, env={**os.environ, "IME_REPLAY_TOKEN": "from-env"})
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 100


def test_version():
    out = replay("--version")
    assert out.returncode == 0 and out.stdout.decode().startswith("ime-replay, version ")


@pytest.mark.parametrize("url", ["nats://127.0.0.1:1", "nats://127.0.0.1:1,nats://127.0.0.1:2"])
def test_from_nats_with_no_server_there_is_one_line_and_exit_1(url):
    pytest.importorskip("nats", reason="the NATS client (ime-recorder[nats]) is not installed")
    """Nothing listens there: one line saying what went wrong and what to do, within seconds, no tracebacks."""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "recorder.cli.replay", "--from-nats", url, "--contract", "1001"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert time.monotonic() - started < 15
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("ime-replay: error: cannot connect to NATS at nats://127.0.0.1:1")
    assert "Connection refused" in lines[0] and "nats-server is running" in lines[0]
    assert out.stdout == ""
