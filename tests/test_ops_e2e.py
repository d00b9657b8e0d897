"""Unattended operation end to end: real `ime-record` processes, real sockets, real files, a real tmpfs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from recorder.events import decode_event
from recorder.humanize import human_bytes
from recorder.model.record import RecordKind
from recorder.segment.layout import segment_files
from recorder.segment.reader import discover, open_segment
from recorder.segment.writer import SegmentWriter

pytestmark = pytest.mark.slow


def sim_args(sim) -> list[str]:
    return ["--base-url", sim.info["base_url"], "--token-url", sim.info["token_url"]]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recorder.cli.record", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "IME_TOKEN": "", "IME_PASSWORD": "", "IME_USERNAME": "",
                                           **(env or {})}, cwd=cwd)


def all_sealed(out: Path) -> None:
    files = segment_files(out)
    assert files and not [p for p in files if p.name.endswith(".open")], files
    for p in files:
        seg = open_segment(p)
        assert seg.sealed and seg.verify() == [], p


# --- config file ---------------------------------------------------------------------------------------


def test_config_file_precedence_print_config_and_secret_refusal(tmp_path):
    cfg = tmp_path / "rec.toml"
    cfg.write_text('ids_file = "ids.txt"\nshards = 3\nout = "/srv/ime"\nflush-ms = 50\nretain-days = 30\n'
                   'password-file = "/etc/ime/password"\n')
    got = run_cli("--config", str(cfg), "--shards", "5", "--print-config",
                  env={"IME_PASSWORD": "hunter2-secret", "IME_USERNAME": "alice"})
    assert got.returncode == 0, got.stderr
    out = got.stdout
    assert "shards = 5  # command line" in out
    # A relative path is relative to the config file.
    assert f'ids-file = "{tmp_path / "ids.txt"}"  # config file' in out and 'out = "/srv/ime"  # config file' in out
    assert "flush-ms = 50.0  # config file" in out and "retain-days = 30.0  # config file" in out
    assert 'username = "alice"  # environment' in out and "level = 3  # default" in out
    assert "hunter2-secret" not in out + got.stderr and '# password = "***"  # environment' in out

    # The printed settings are a valid config again (minus the comments' secrets).
    again = tmp_path / "again.toml"
    again.write_text(out)
    assert run_cli("--config", str(again), "--print-config").returncode == 0

    for text, needle in (('password = "hunter2"\n', "refusing 'password' in clear"),
                         ('token = "eyJabc.def.ghi"\n', "refusing 'token' in clear"),
                         ("sharts = 2\n", "unknown key 'sharts'"),
                         ("shards = 2.7\n", "'shards' must be a whole number, not 2.7"),
                         ('base-url = ["ws://a", 3]\n', "'base-url' must be a string, not 3")):
        cfg.write_text(text)
        bad = run_cli("--config", str(cfg), "--demo", "--duration", "1", "--out", str(tmp_path / "never"))
        assert bad.returncode == 2, bad.stderr
        assert needle in bad.stderr and bad.stderr.count("\n") == 1 and "hunter2" not in bad.stderr
        assert not (tmp_path / "never").exists()


def test_config_file_drives_a_recording_and_password_on_command_line_warns(sim_process, recorder, tmp_path):
    sim = sim_process("--contracts", "4", "--rate", "200")
    (tmp_path / "ids.txt").write_text("\n".join(sim.info["ids"]) + "\n")
    (tmp_path / "pw").write_text(sim.info["password"] + "\n")
    cfg = tmp_path / "rec.toml"
    cfg.write_text(f'ids-file = "{tmp_path / "ids.txt"}"\nout = "{tmp_path / "from-config"}"\n'
                   f'base_url = "{sim.info["base_url"]}"\ntoken-url = "{sim.info["token_url"]}"\n'
                   f'password-file = "{tmp_path / "pw"}"\nduration = 4\n')
    rec = recorder("--config", str(cfg), "--out", str(tmp_path / "from-cli"),
                   env={"IME_USERNAME": sim.info["username"], "IME_PASSWORD": ""})
    assert rec.wait(60) == 0, rec.stderr
    assert not (tmp_path / "from-config").exists() and discover([tmp_path / "from-cli"])
    assert sim.info["password"] not in rec.stderr

    # Long enough for the first connection on a loaded machine: a run that never connects exits 1.
    rec = recorder("--ids", sim.info["ids"][0], "--out", str(tmp_path / "o2"), "--duration", "4",
                   "--username", sim.info["username"], "--password", sim.info["password"], *sim_args(sim))
    assert rec.wait(60) == 0, rec.stderr
    assert "--password on the command line is readable by every local user" in rec.stderr
    assert sim.info["password"] not in rec.stderr


def test_busy_metrics_port_is_refused_before_recording(recorder, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rec = recorder("--demo", "--duration", "5", "--metrics-port", str(port), "--out", str(tmp_path / "out"))
        assert rec.wait(30) == 2
    assert f"--metrics-port {port} on 127.0.0.1 is already in use" in rec.stderr
    assert rec.stderr.strip().count("\n") == 0 and not (tmp_path / "out").exists()


# --- systemd notify ------------------------------------------------------------------------------------


def test_notify_ready_watchdog_and_stopping_on_a_test_socket(recorder, tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1.0)
    out = tmp_path / "out"
    rec = recorder("--demo", "--shards", "2", "--out", str(out), "--metrics-port", "0",
                   env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    got: list[tuple[float, str]] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 30 and not any(m.startswith("READY=1") for _, m in got):
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), sock.recv(4096).decode()))
        ready_at = next(t for t, m in got if m.startswith("READY=1"))
        while time.monotonic() - ready_at < 3:
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), sock.recv(4096).decode()))
        rec.wait_for("Prometheus metrics on http://127.0.0.1:")
        port = int(rec.stderr.split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200 and health.read() == b"ok\n"
        rec.signal(signal.SIGTERM)
        while not any(m.startswith("STOPPING=1") for _, m in got) and time.monotonic() - t0 < 60:
            with contextlib.suppress(TimeoutError):
                got.append((time.monotonic(), sock.recv(4096).decode()))
        assert rec.wait(30) == 0
    finally:
        sock.close()
    ready = next(m for _, m in got if m.startswith("READY=1"))
    assert f"MAINPID={rec.proc.pid}" in ready and "on 2 shards" in ready
    # Both shards connected before READY: the recorder said so, and READY came after that line.
    assert "ready: every shard is connected or retrying" in rec.stderr
    pings = [t for t, m in got if m == "WATCHDOG=1" and t >= ready_at]
    assert len(pings) >= 4, got  # every 0.5 s for 3 s, allowing a loaded machine
    assert any(m.startswith("STOPPING=1") for _, m in got)
    all_sealed(out)


def test_watchdog_stays_silent_when_the_supervisor_hangs(recorder, tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    rec = recorder("--demo", "--out", str(tmp_path / "out"),
                   env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "600000"})
    try:
        rec.wait_for("ready: every shard", 30)
        time.sleep(0.5)
        os.kill(rec.proc.pid, signal.SIGSTOP)  # a hung supervisor (the workers keep running)
        time.sleep(0.3)
        with contextlib.suppress(TimeoutError):
            while True:
                sock.recv(4096)  # drain what was sent before the stop
        silent = []
        t_end = time.monotonic() + 2
        while time.monotonic() < t_end:
            with contextlib.suppress(TimeoutError):
                silent.append(sock.recv(4096))
        os.kill(rec.proc.pid, signal.SIGCONT)
        resumed = []
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end and not resumed:
            with contextlib.suppress(TimeoutError):
                resumed.append(sock.recv(4096))
        assert silent == [] and resumed == [b"WATCHDOG=1"]
        rec.signal(signal.SIGTERM)
        assert rec.wait(30) == 0
    finally:
        sock.close()


# --- retention -----------------------------------------------------------------------------------------


def _old_segment(directory: Path, shard: int, start_ns: int, age_days: float, size_kib: int = 64) -> Path:
    w = SegmentWriter(directory, shard=shard, level=1)
    w.append(start_ns, 1, 1, os.urandom(size_kib * 1024))
    (sealed,) = w.close()
    mtime = time.time() - age_days * 86400
    os.utime(sealed.path, (mtime, mtime))
    return sealed.path


def test_retention_removes_exactly_the_oldest_sealed_files(recorder, tmp_path):
    out = tmp_path / "out"
    day = out / "2026-01-10"
    day.mkdir(parents=True)
    base = 1_767_000_000 * 10**9
    old = [_old_segment(day, 0, base + i * 10**9, 40 - i) for i in range(3)]  # 40, 39, 38 days old
    young = [_old_segment(out, 1, base + (10 + i) * 10**9, 3 - i) for i in range(3)]  # 3, 2, 1 days old
    old_bytes = sum(p.stat().st_size for p in old)
    rec = recorder("--demo", "--out", str(out), "--retain-days", "7", "--duration", "4")
    assert rec.wait(60) == 0, rec.stderr
    assert [p.exists() for p in old] == [False] * 3 and all(p.exists() for p in young)
    assert not day.exists()  # an emptied day directory goes too
    assert rec.stderr.count("retention: removed") == 3 and "older than 7 days" in rec.stderr
    all_sealed(out)
    # The summary counted the removed files as "on disk" (issue 21): it now says what retention removed and
    # what the directory holds, which is what is there.
    files = [p for p in out.rglob("*.zst")]
    summary = re.search(r"retention removed 3 files \(([^)]+)\) of this and earlier runs; the recording directory "
                        r"holds (\d+) segment files \(([^)]+)\)", rec.stderr)
    assert summary is not None, rec.stderr
    assert int(summary[2]) == len(files) and summary[3] == human_bytes(sum(p.stat().st_size for p in files))
    assert summary[1] == human_bytes(old_bytes)

    # By size: keep at most ~150 KiB of the five 64 KiB+ files → the oldest of the young go first, by name time.
    more = [_old_segment(out, 2, base + (20 + i) * 10**9, 0.5) for i in range(2)]
    rec = recorder("--demo", "--demo-rate", "1", "--out", str(out), "--retain-gb", str(200 / (1 << 20)),
                   "--duration", "4")
    assert rec.wait(60) == 0, rec.stderr
    remaining = sorted(p for p in [*young, *more] if p.exists())
    assert remaining == [more[-1]] or remaining == more[-2:], remaining
    assert not any(p.exists() for p in young)
    assert "recording above" in rec.stderr


# --- disk guard ----------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_disk_guard_stops_cleanly_on_a_small_filesystem(recorder, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {got.stderr.decode().strip()}")
    try:
        # Leave ~6 MiB above the 16 MiB floor; the warning threshold sits just above where we start.
        filler = mnt / "filler"
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize
        with open(filler, "wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * (free - (22 << 20)))
        out = mnt / "out"
        rec = recorder("--demo", "--demo-rate", "20000", "--demo-contracts", "200", "--level", "-7",
                       "--flush-ms", "50", "--out", str(out), "--warn-free-gb", str(30 / 1024),
                       "--min-free-gb", str(16 / 1024), "--metrics-port", "0")
        code = rec.wait(120)
        err = rec.stderr
        assert code == 1, err
        errors = [line for line in err.splitlines() if line.startswith("ime-record: error: ")]
        assert len(errors) == 1 and "below --min-free-gb" in errors[0], err
        assert "below --warn-free-gb" in err
        st = os.statvfs(mnt)
        assert st.f_bavail * st.f_frsize > 8 << 20  # stopped well before the disk was full
        assert "No space left" not in err and "ENOSPC" not in err
        all_sealed(out)
        # Both crossings are in the data, for `ime-segments report` to mark.
        events = [decode_event(r.payload) for f in segment_files(out) for r in open_segment(f).iter_records()
                  if r.kind == RecordKind.EVENT]
        levels = [e.get("level") for e in events if e.get("event") == "disk"]
        assert "low" in levels and "critical" in levels, levels
        before = sorted(segment_files(out))
        again = recorder("--demo", "--out", str(out), "--min-free-gb", str(64 / 1024))
        assert again.wait(60) == 1
        errors = [line for line in again.stderr.splitlines() if line.startswith("ime-record: error: ")]
        assert len(errors) == 1 and "below --min-free-gb" in errors[0] and "demo:" not in again.stderr
        assert sorted(segment_files(out)) == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# --- --on-sealed ---------------------------------------------------------------------------------------


def test_on_sealed_retries_a_failing_command_and_never_blocks_recording(recorder, tmp_path):
    hook = tmp_path / "upload.sh"
    log = tmp_path / "uploaded.txt"
    # Each file fails once ("network down"), then is "uploaded" (copied) on the retry.
    hook.write_text(f'#!/bin/sh\nmark="{tmp_path}/tried-$(basename "$1")"\n'
                    f'if [ ! -e "$mark" ]; then touch "$mark"; echo "network down" >&2; exit 7; fi\n'
                    f'cp "$1" "{tmp_path}/bucket/" && echo "$1" >> "{log}"\n')
    hook.chmod(0o755)
    (tmp_path / "bucket").mkdir()
    out = tmp_path / "out"
    rec = recorder("--demo", "--shards", "2", "--out", str(out), "--rotate-minutes", str(2 / 60),
                   "--on-sealed", f"{hook}", "--duration", "7")
    assert rec.wait(90) == 0, rec.stderr
    sealed = sorted(p for p in segment_files(out) if p.name.endswith(".zst"))
    assert len(sealed) >= 4
    uploaded = sorted(Path(line) for line in log.read_text().split())
    assert uploaded == sealed  # every sealed file, once, including the last ones sealed at shutdown
    assert rec.stderr.count("--on-sealed failed for") == len(sealed) and "exit 7: network down" in rec.stderr
    for p in sealed:
        assert (tmp_path / "bucket" / p.name).read_bytes() == p.read_bytes()
    # Recording went on while hooks failed: messages arrived throughout.
    per_shard = [int(x) for x in re.findall(r"shard \d+: (\d+) messages", rec.stderr)]
    assert len(per_shard) == 2 and min(per_shard) > 1000, per_shard


# --- tokens --------------------------------------------------------------------------------------------


def test_token_renewed_before_a_short_exp_with_no_refused_connection(sim_process, recorder, tmp_path):
    # Tokens live 8 s; the sim drops every connection every 1.5 s, so the recorder reconnects all along and
    # would present an expired token if it waited for a refusal.
    sim = sim_process("--contracts", "4", "--rate", "200", "--token-ttl", "8", "--drop-every", "1.5")
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(tmp_path / "out"), "--metrics-port", "0",
                   "--duration", "20", *sim_args(sim),
                   env={"IME_USERNAME": sim.info["username"], "IME_PASSWORD": sim.info["password"]})
    rec.wait_for("Prometheus metrics on http://127.0.0.1:")
    port = int(rec.stderr.split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
    time.sleep(3)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    remaining = float(next(line.split()[-1] for line in text.splitlines()
                           if line.startswith("ime_recorder_token_remaining_seconds")))
    assert 0 < remaining <= 8
    assert rec.wait(60) == 0, rec.stderr
    stats = orjson.loads(urllib.request.urlopen(sim.info["stats_url"], timeout=5).read())
    assert stats["refused"] == {}, stats["refused"]  # without renewal: {'expired token': N}
    assert rec.stderr.count("token renewed ahead of expiry") >= 2
    assert "refused" not in rec.stderr.split("recorded for")[0].lower()


# --- trading sessions and the stall alarm --------------------------------------------------------------


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def test_stall_alert_during_a_session_and_quiet_outside(recorder, tmp_path):
    # A simulator that sends nothing: silence during an all-week session raises the alarm once.
    rec = recorder("--demo", "--demo-rate", "0.001", "--out", str(tmp_path / "a"), "--stall-alert", "2",
                   "--sessions", "mon-sun 00:00-24:00", "--metrics-port", "0")
    rec.wait_for("Prometheus metrics on http://127.0.0.1:")
    port = int(rec.stderr.split("Prometheus metrics on http://127.0.0.1:")[1].split("/")[0])
    rec.wait_for("ERROR recorder.operations: stall: no message for", 20)
    assert _metric(port, "ime_recorder_stalled") == 1 and _metric(port, "ime_recorder_stalls_total") == 1
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert err.value.code == 503 and b"stalled during a trading session" in err.value.read()
    time.sleep(2.5)
    assert rec.stderr.count("stall: no message for") == 1  # once per stall, not once a second
    rec.signal(signal.SIGTERM)
    assert rec.wait(30) == 0
    # The stall is in the data too: an event record in the shard's segment.
    stalls = [decode_event(r.payload) for p in discover([tmp_path / "a"]) for r in open_segment(p).iter_records()
              if r.kind == RecordKind.EVENT and decode_event(r.payload).get("event") == "stall"]
    assert len(stalls) == 1 and stalls[0]["after_s"] == 2

    # The same silence outside every session says nothing.
    rec = recorder("--demo", "--demo-rate", "0.001", "--out", str(tmp_path / "b"), "--stall-alert", "1",
                   "--sessions", "none", "--duration", "4")
    assert rec.wait(30) == 0
    assert "stall: no message" not in rec.stderr and "ERROR" not in rec.stderr


# --- deploy/ -------------------------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_deploy_files_are_valid(tmp_path):
    got = run_cli("--config", str(DEPLOY / "ime-record.toml"), "--print-config")
    assert got.returncode == 0, got.stderr
    assert "retain-days = 90.0  # config file" in got.stdout and "stall-alert = 300.0  # config file" in got.stdout
    unit = (DEPLOY / "ime-record.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "KillMode=mixed", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/ime-record", "NoNewPrivileges=yes", "User=ime-record",
                 "EnvironmentFile=/etc/ime-record/env", "--config /etc/ime-record/ime-record.toml",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit, line
    env = (DEPLOY / "ime-record.env").read_text()
    assert "IME_USERNAME=" in env and "IME_PASSWORD=" in env
    if shutil.which("systemd-analyze") is None:
        return
    local = tmp_path / "ime-record.service"
    local.write_text(unit.replace("/opt/ime-record/.venv/bin/ime-record", str(Path(sys.executable).parent /
                                                                            "ime-record")))
    check = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "ime-record.service" not in check.stderr, check.stderr


def test_retention_waits_for_on_sealed(recorder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    base = 1_767_000_000 * 10**9
    old = [_old_segment(out, 0, base + i * 10**9, 30) for i in range(2)]
    # The upload always fails: the old files are never "finished with", so retention keeps them.
    rec = recorder("--demo", "--out", str(out), "--retain-days", "7", "--on-sealed", "false", "--duration", "4")
    assert rec.wait(60) == 0, rec.stderr
    assert all(p.exists() for p in old) and "retention: removed" not in rec.stderr
    assert "--on-sealed failed for" in rec.stderr
    # Once uploaded, they go.
    rec = recorder("--demo", "--out", str(out), "--retain-days", "7", "--on-sealed", "true", "--duration", "5")
    assert rec.wait(60) == 0, rec.stderr
    assert not any(p.exists() for p in old) and rec.stderr.count("retention: removed") == 2


def test_token_file_is_reread_ahead_of_expiry(sim_process, recorder, tmp_path):
    from recorder.record.auth import issue_token

    sim = sim_process("--contracts", "4", "--rate", "200", "--token-ttl", "8", "--drop-every", "1.5")
    token_file = tmp_path / "token"

    def rotate() -> None:  # what an operator's cron job or sidecar does: put a fresh token in the file
        token_file.write_text(issue_token(sim.info["token_url"], sim.info["username"], sim.info["password"]) + "\n")

    rotate()
    rec = recorder("--ids", ",".join(sim.info["ids"]), "--out", str(tmp_path / "out"), "--token-file",
                   str(token_file), "--duration", "16", *sim_args(sim), env={"IME_USERNAME": "", "IME_PASSWORD": ""})
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline:
        time.sleep(3)
        rotate()
    assert rec.wait(60) == 0, rec.stderr
    stats = orjson.loads(urllib.request.urlopen(sim.info["stats_url"], timeout=5).read())
    assert stats["refused"] == {}, stats["refused"]
    assert rec.stderr.count("token renewed ahead of expiry") >= 1
