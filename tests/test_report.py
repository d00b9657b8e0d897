"""`ime-segments report`: one self-contained HTML page of a recording's health, agreeing with `ime-segments stats`.

End to end: a real `ime-record --redundancy 2` against `ime-sim --drop-every 3` (one refused contract, one worker
SIGKILLed), the real commands, and the page rendered by headless Chromium. Fast: synthetic segment files for
windows, zones, bad input, and a day of flapping connections (the page stays small).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from record_util import RecorderProcess
from segment_util import ime_payload, write_records
from sim_util import SimProcess

from recorder.events import Event, encode_event
from recorder.model.record import RecordKind, encode_receipt

S = 1_000_000_000
MS = 1_000_000
TEHRAN = ZoneInfo("Asia/Tehran")
# 2026-11-24T05:30:00Z = 09:00 in Tehran (UTC+03:30).
T0 = 1_795_498_200 * S
EV, TEXT, RECEIPT = int(RecordKind.EVENT), int(RecordKind.TEXT), int(RecordKind.RECEIPT)
RUN_S = 15
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def segments(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "IME_TZ"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "recorder.cli.segments", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def report_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="ime-report-data">(.*?)</script>', html, re.S)
    assert m is not None, "no data block in the page"
    return orjson.loads(m.group(1).replace("<\\/", "</"))


def tehran(ts_ns: int, with_date: bool = True) -> str:
    """What the page shows for a time in Tehran: ms (cut), with the offset."""
    moment = datetime.fromtimestamp(ts_ns // S, TEHRAN)
    text = f"{moment:%Y-%m-%dT%H:%M:%S}.{ts_ns % S // MS:03d}+03:30"
    return text if with_date else text[11:]


def listed_gaps(html: str) -> list[tuple[int, int, str, str]]:
    """(from ns, to ns, shown from, shown to) of every gap listed in the groups table."""
    return [(int(a), int(b), x, y) for a, b, x, y in re.findall(
        r'<li data-from-ns="(\d+)" data-to-ns="(\d+)"[^>]*><time>([^<]+)</time> → <time>([^<]+)</time>', html)]


NETWORK = [
    re.compile(r"""\b(?:src|href|xlink:href|action|poster|data|srcset)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""",
               re.I),
    re.compile(r"""url\(\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I),
    re.compile(r"@import", re.I),
    re.compile(r"<(?:link|iframe|object|embed|img|video|audio|source)\b", re.I),
    re.compile(r"<script\b(?![^>]*type=\"application/json\")", re.I),
]


def network_references(html: str) -> list[str]:
    """Anything in the page that would make a browser fetch: every way to name a URL to load, and any http(s)
    address at all apart from the SVG namespace names (identifiers, never fetched)."""
    found = [m.group(0) for pattern in NETWORK for m in pattern.finditer(html)]
    without_namespaces = re.sub(r'xmlns(?::\w+)?="http://www\.w3\.org/[^"]*"', "", html)
    found += re.findall(r"https?://[^\s\"'<>]*", without_namespaces)
    return found


# --- end to end: a real redundant recording -------------------------------------------------------------

# One worker runs the three tests of the recording (`make test` distributes with --dist loadgroup): it is made once.
E2E = pytest.mark.xdist_group("report-e2e")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """15 s of `ime-record --shards 2 --redundancy 2` against `ime-sim --drop-every 3`, with a contract the
    server refuses (8888) and one worker SIGKILLed after its first drop; then `stats --json` and `report`."""
    tmp = tmp_path_factory.mktemp("report-e2e")
    sim = SimProcess(tmp, "--contracts", "8", "--rate", "1000", "--seed", "11", "--drop-every", "3").start()
    rec: RecorderProcess | None = None
    try:
        info = sim.info
        rec = RecorderProcess(tmp, "--ids", ",".join(info["ids"]) + ",8888", "--shards", "2", "--redundancy", "2",
                              "--base-url", info["base_url"], "--token-url", info["token_url"],
                              "--duration", str(RUN_S), "--out", str(tmp / "data"),
                              env={"IME_USERNAME": info["username"], "IME_PASSWORD": info["password"]}).start()
        rec.wait_for("connection closed (code 1006", timeout=60)  # recording, and the simulator drops
        deadline = time.monotonic() + 30
        while len(pids := rec.worker_pids()) < 2:
            assert time.monotonic() < deadline, rec.stderr
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)
        assert rec.wait(RUN_S + 90) == 0, rec.stderr
        assert "restarting in" in rec.stderr
    finally:
        if rec is not None:
            rec.kill_tree()
        sim.stop()
    data = tmp / "data"
    stats = segments("stats", "--json", str(data))
    assert stats.returncode == 0, stats.stderr
    out = tmp / "report.html"
    started = time.monotonic()
    made = segments("report", str(data), "--out", str(out), "--tz", "Asia/Tehran")
    elapsed = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    assert "warning" not in made.stderr.replace("font cache", ""), made.stderr  # matplotlib's first run may say so
    html = out.read_text()
    print(f"report of {RUN_S} s, 2 shards x 2 copies: {len(html.encode()) / 1024:.0f} KiB in {elapsed:.1f} s")
    return {"dir": tmp, "html": html, "path": out, "stats": orjson.loads(stats.stdout), "stdout": made.stdout}


@pytest.mark.slow
@E2E
def test_the_report_shows_the_gaps_stats_reports_at_the_same_times(recorded):
    html, stats = recorded["html"], recorded["stats"]
    data = report_data(html)
    # One computation: the embedded document is `stats --json`, to the last digit.
    assert data["stats"] == stats
    groups = stats["connections"]["groups"]
    assert len(groups) >= 3  # two shards' groups, the restarted worker's groups, the refused groups

    # Every gap stats lists is in the table at its times (ns in the data, Tehran time with its offset shown) ...
    listed = listed_gaps(html)
    for g in groups:
        for gap in g["longest_gaps"]:
            a, b = gap["from_ns"], gap["to_ns"]
            assert (a, b, tehran(a), tehran(b, with_date=False)) in listed or \
                (a, b, tehran(a), tehran(b)) in listed, (gap, listed)
    assert len(listed) == sum(len(g["longest_gaps"]) for g in groups)
    # ... and drawn on its group's row of the timeline: each uncovered interval of each group, and no other.
    lanes = {(lane["shard"], lane["group"]): lane for lane in data["timeline"]}
    for g in groups:
        drawn = {tuple(x) for x in lanes[(g["shard"], g["group"])]["gaps"]}
        assert {(x["from_ns"], x["to_ns"]) for x in g["longest_gaps"]} <= drawn
    for (shard, group), lane in lanes.items():
        uncovered = sum(g["uncovered_s"] for g in groups if (g["shard"], g["group"]) == (shard, group))
        assert abs(sum(b - a for a, b in lane["gaps"]) / 1e9 - uncovered) < 1e-5 * (1 + len(lane["gaps"]))
        assert lane["gaps_total"] == sum(g["gaps"] for g in groups if (g["shard"], g["group"]) == (shard, group))

    # The killed worker: a gap that is no first connection's wait, and the restart marked on its shard's row.
    restarts = [e for e in data["events"] if e["event"] == "worker_restarted"]
    assert len(restarts) == 1
    shard = restarts[0]["shard"]
    killed = [x for g in groups if g["shard"] == shard for x in g["longest_gaps"]
              if x["to_ns"] <= restarts[0]["ts_ns"] and x["s"] >= 0.1]
    assert killed, groups
    assert 'class="verdict warn"' in html and "1 worker restart(s)" in html
    assert 'data-event="worker_restarted"' in html and 'data-event="rejected"' in html
    assert any(e["event"] == "rejected" and "8888" in e["detail"] for e in data["events"])

    # Messages per second: every message counted once, and the busiest second is stats' max rate.
    assert data["bins"]["width_s"] == 1
    rates = data["rates"]["contracts"]
    assert set(rates) == set(stats["contracts"])
    for contract, figures in rates.items():
        assert sum(figures["counts"]) == stats["contracts"][contract]["records"]
        assert max(figures["peaks"]) == stats["contracts"][contract]["max_rate_per_s"]
    # Each copy's lag: the figures of the table are stats' (per worker), the figure's are over the lane.
    for g in groups:
        for copy, c in g["copies"].items():
            row = re.search(rf'<tr data-shard="{g["shard"]}" data-worker="{g["worker"]}" data-group="{g["group"]}" '
                            rf'data-copy="{copy}" data-share-first="([\d.e-]+)">', html)
            assert row is not None and float(row.group(1)) == c["share_first"]
    assert {(x["shard"], x["group"], x["copy"]) for x in data["lag"]} == {
        (g["shard"], g["group"], int(k)) for g in groups for k, c in g["copies"].items() if c["lag_when_later_us"]}

    # Every time shown carries its zone, and it is --tz's.
    shown = re.findall(r"<time>([^<]+)</time>", html)
    assert shown and all(t.endswith("+03:30") for t in shown), [t for t in shown if not t.endswith("+03:30")]
    assert data["zone"] == "Asia/Tehran (+03:30)"
    assert "receive time, Asia/Tehran (+03:30)" in html  # the figures' time axes
    assert recorded["stdout"].startswith(f"wrote {recorded['path']} (")


@pytest.mark.slow
@E2E
def test_the_report_loads_nothing_from_the_network(recorded):
    html = recorded["html"]
    assert network_references(html) == []
    assert html.count("<svg") == 3  # timeline, rates, lag: inline
    # The checker itself finds what it must.
    for bad in ('<img src="https://cdn.example/x.png">', '<link rel="stylesheet" href="//fonts.example/css">',
                "<style>@import 'x.css'</style>", '<script src="app.js"></script>',
                '<div style="background:url(http://x/y.png)">', '<use xlink:href="https://x/s.svg#a"/>'):
        assert network_references(bad), bad


def chromium_screenshot(page: Path, png: Path, workdir: Path) -> None:
    """Headless Chromium's screenshot of the page; skipped (failed under CI) where Chromium cannot run."""
    def cannot(reason: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must render the report in Chromium: {reason}")
        pytest.skip(reason)

    if CHROMIUM is None:
        cannot("chromium is not installed (apt-get install chromium; `make test` installs it when root)")
    assert CHROMIUM is not None
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={workdir / 'chromium-profile'}", f"--screenshot={png}",
            "--window-size=1400,3000", "--hide-scrollbars", page.resolve().as_uri()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        cannot("chromium did not finish a screenshot within 120 s")
        return
    finally:
        # Its zygote and renderer children are in the session it leads.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0 or not png.exists():
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        cannot(f"chromium could not run here (exit {proc.returncode}): {' | '.join(tail)}")


@pytest.mark.slow
@E2E
def test_chromium_renders_the_report_with_its_figures(recorded):
    import numpy as np
    from PIL import Image

    png = recorded["dir"] / "report.png"
    chromium_screenshot(recorded["path"], png, recorded["dir"])
    image = Image.open(png).convert("RGB")
    assert image.size == (1400, 3000)
    pixels = np.asarray(image, dtype=np.int16).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    non_white = float((pixels.sum(axis=1) < 3 * 245).mean())
    assert colours > 100 and non_white > 0.05, (colours, non_white)

    def near(target: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(target)) <= 12).all(axis=1).sum())

    # The timeline's bars (copy 0 blue, copy 1 green) and the red of the gaps are on screen, not just text.
    assert near((31, 119, 180)) > 2000 and near((44, 160, 44)) > 2000, "no copy bars drawn"
    assert near((214, 39, 40)) > 50, "no gap drawn"


# --- fast: synthetic recordings -----------------------------------------------------------------------------


def ev(ts: int, rec_conn: int, event: Event, **fields: object) -> tuple[int, int, int, bytes]:
    return (ts, rec_conn, EV, encode_event(event, **fields))


@pytest.fixture
def ten_minutes(tmp_path: Path) -> Path:
    """One shard, one group of 1001/1002, two copies, 09:00-09:10 Tehran; both copies down 09:03:00-09:03:05."""
    ids = ["1001", "1002"]
    recs = [ev(T0, 0, Event.WORKER_STARTED, incarnation=1, contracts=ids)]
    for conn, copy in ((1, 0), (2, 1)):
        recs.append(ev(T0 + MS * conn, conn, Event.CONNECTING, conn=conn, contracts=ids, group=1, copy=copy))
        recs.append(ev(T0 + 5 * MS * conn, conn, Event.OPENED, conn=conn, contracts=ids, group=1, copy=copy))
    down, up = T0 + 180 * S, T0 + 185 * S
    recs += [ev(down, 1, Event.CLOSED, conn=1, code=1006, group=1, copy=0),
             ev(down + MS, 2, Event.CLOSED, conn=2, code=1006, group=1, copy=1),
             ev(up - 2 * MS, 3, Event.CONNECTING, conn=3, contracts=ids, group=1, copy=0),
             ev(up, 3, Event.OPENED, conn=3, contracts=ids, group=1, copy=0),
             ev(up + 2 * MS, 4, Event.CONNECTING, conn=4, contracts=ids, group=1, copy=1),
             ev(up + 4 * MS, 4, Event.OPENED, conn=4, contracts=ids, group=1, copy=1)]
    for i in range(6000):
        ts = T0 + 10 * MS + i * 100 * MS
        if down <= ts < up:
            continue
        first, other = (1, 2) if ts < down else (3, 4)
        if i % 4 == 0:
            first, other = other, first
        recs.append((ts, first, TEXT, ime_payload(i, ids[i % 2])))
        recs.append((ts + 30_000 + i % 500 * 1000, other, RECEIPT, encode_receipt(first, 30_000 + i % 500 * 1000)))
    recs.append(ev(T0 + 600 * S, 0, Event.WORKER_STOPPING, reason="recorder stopping"))
    recs.sort(key=lambda r: r[0])
    d = tmp_path / "data"
    write_records(d, recs, shard=0, meta={"contracts": ids, "endpoint": "id"})
    return d


def test_a_window_and_a_zone_select_and_show_as_stats_does(ten_minutes, tmp_path):
    out = tmp_path / "r.html"
    window = ("--from", "09:02", "--to", "09:06")
    made = segments("report", str(ten_minutes), "--out", str(out), *window, env={"IME_TZ": "Asia/Tehran"})
    assert made.returncode == 0, made.stderr
    stats = segments("stats", "--json", str(ten_minutes), "--tz", "Asia/Tehran", *window)
    html = out.read_text()
    data = report_data(html)
    assert data["stats"] == orjson.loads(stats.stdout)
    assert data["span"]["from"] == "2026-11-24T09:02:00.000+03:30" and data["span"]["to"] == \
        "2026-11-24T09:06:00.000+03:30"
    assert "--from 2026-11-24T09:02:00.000+03:30, --to 2026-11-24T09:06:00.000+03:30" in html
    assert sum(data["rates"]["total"]["counts"]) == data["stats"]["records"] - sum(data["stats"]["events"].values())
    assert data["bins"]["width_s"] == 1 and data["bins"]["origin_ns"] == T0 + 120 * S
    # The group connected at 09:00 is there from 09:02 on, both copies up, with its gap at 09:03 (Tehran).
    [lane] = data["timeline"]
    assert {c: iv[0][0] for c, iv in lane["connected"].items()} == {"0": T0 + 120 * S, "1": T0 + 120 * S}
    down, up = T0 + 180 * S + MS, T0 + 185 * S
    assert lane["gaps"] == [[down, up]]
    assert listed_gaps(html) == [(down, up, "2026-11-24T09:03:00.001+03:30", "09:03:05.000+03:30")]
    assert "(first connection)" not in html


def test_the_whole_recording_with_its_gap_in_utc(ten_minutes, tmp_path):
    out = tmp_path / "r.html"
    made = segments("report", str(ten_minutes), "--out", str(out))
    assert made.returncode == 0, made.stderr
    html = out.read_text()
    data = report_data(html)
    assert data["stats"] == orjson.loads(segments("stats", "--json", str(ten_minutes)).stdout)
    down, up = T0 + 180 * S + MS, T0 + 185 * S  # the second copy's close, the first copy's open
    assert (down, up, "2026-11-24T05:33:00.001Z", "05:33:05.000Z") in listed_gaps(html)
    assert [down, up] in data["timeline"][0]["gaps"]
    shown = re.findall(r"<time>([^<]+)</time>", html)
    assert shown and all(t.endswith("Z") for t in shown)
    assert "receive time, UTC (Z)" in html
    assert 'class="verdict warn"' in html and "4.999 s in 1 gap(s) after its first connection" in html
    assert network_references(html) == []


def test_bad_input_is_one_line(ten_minutes, tmp_path):
    out = str(tmp_path / "r.html")
    cases = [
        (("report", str(tmp_path / "nothing"), "--out", out), 2, "no such file or directory"),
        (("report", str(ten_minutes), "--out", str(tmp_path / "no" / "r.html")), 2, "does not exist"),
        (("report", str(ten_minutes), "--out", str(tmp_path)), 2, "is a directory"),
        (("report", str(ten_minutes), "--out", out, "--tz", "Mars/Olympus"), 2, "unknown time zone"),
        (("report", str(ten_minutes), "--out", out, "--from", "09:05", "--to", "09:00"), 2, "is not before"),
        (("report", str(ten_minutes), "--out", out, "--from", "2030-01-01"), 1, "no records selected"),
        (("report", str(ten_minutes)), 2, "--out"),
    ]
    for args, code, needle in cases:
        got = segments(*args)
        assert got.returncode == code, (args, got.stderr)
        assert got.stderr.count("\n") == 1 and needle in got.stderr and "Traceback" not in got.stderr, got.stderr
        assert not Path(out).exists()


def test_a_damaged_file_is_reported_and_the_rest_still_drawn(ten_minutes, tmp_path):
    bad = ten_minutes / "ime-s01-20261124T053000.000Z.zst"
    bad.write_bytes(b"\x50\x2a\x4d\x18\x40\x00\x00\x00IMEH")  # cut inside its header
    out = tmp_path / "r.html"
    got = segments("report", str(ten_minutes), "--out", str(out))
    assert got.returncode == 1 and f"warning: skipped {bad}" in got.stderr and "Traceback" not in got.stderr
    data = report_data(out.read_text())
    assert data["stats"]["records"] > 5900 and "1 file(s) that could not be opened" in out.read_text()


def test_without_matplotlib_one_line_says_what_to_install(ten_minutes, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from recorder.cli.segments import main; "
            f"sys.argv = ['ime-segments', 'report', {str(ten_minutes)!r}, '--out', {str(tmp_path / 'r.html')!r}]; "
            "main()")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and got.stderr.count("\n") == 1, got.stderr
    assert "report needs matplotlib" in got.stderr and "ime-recorder[analysis]" in got.stderr


def flapping_day(directory: Path) -> int:
    """24 h of one group, two copies of 20 contracts: each copy drops every ~17/23 s (9000 drops), both for
    30 s every 2 h (11 gaps), a message every second, a later copy of most."""
    ids = [str(1001 + i) for i in range(20)]
    start = T0 - 5 * 3600 * S
    recs = [ev(start, 0, Event.WORKER_STARTED, incarnation=1, contracts=ids)]
    up: dict[int, int] = {}
    conns = [0]

    def connect(ts: int, copy: int) -> None:
        conns[0] += 1
        c = conns[0]
        recs.append(ev(ts, c, Event.CONNECTING, conn=c, contracts=ids, group=1, copy=copy))
        recs.append(ev(ts + 3 * MS, c, Event.OPENED, conn=c, contracts=ids, group=1, copy=copy))
        up[copy] = c

    def drop(ts: int, copy: int) -> None:
        c = up.pop(copy)
        recs.append(ev(ts, c, Event.CLOSED, conn=c, code=1006, group=1, copy=copy))

    connect(start + S, 0)
    connect(start + S + 100 * MS, 1)
    every = {0: 17 * S, 1: 23 * S}
    next_drop = {0: start + every[0], 1: start + every[1]}
    outage = start + 7200 * S
    t = start + 2 * S
    i = 0
    while t < start + 86_400 * S:
        if t >= outage:
            for copy in list(up):
                drop(t, copy)
            connect(t + 30 * S, 0)
            connect(t + 30 * S + MS, 1)
            t += 30 * S + 10 * MS
            outage += 7200 * S
            continue
        for copy in (0, 1):
            if t >= next_drop[copy]:
                drop(t, copy)
                connect(t + 5 * MS, copy)
                next_drop[copy] = t + every[copy]
        first = 0 if i % 3 else 1
        recs.append((t, up[first], TEXT, ime_payload(i, ids[i % 20])))
        lag = 20_000 + (i * 7919) % 400_000
        recs.append((t + lag, up[1 - first], RECEIPT, encode_receipt(up[first], lag)))
        i += 1
        t += S
    recs.append(ev(t, 0, Event.WORKER_STOPPING, reason="recorder stopping"))
    write_records(directory, recs, shard=0, rotate_seconds=0, flush_ms=10_000_000,
                  meta={"contracts": ids, "endpoint": "id"})
    return len(recs)


@pytest.mark.slow
def test_a_flapping_day_stays_a_small_page(tmp_path):
    records = flapping_day(tmp_path / "day")
    out = tmp_path / "day.html"
    started = time.monotonic()
    made = segments("report", str(tmp_path / "day"), "--out", str(out), "--tz", "Asia/Tehran", timeout=600)
    elapsed = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    size = out.stat().st_size
    print(f"a day, {records} records: {size / 1024:.0f} KiB in {elapsed:.1f} s")
    assert size < 3 << 20
    html = out.read_text()
    data = report_data(html)
    assert data["bins"]["width_s"] == 120 and data["bins"]["count"] <= 1200
    lane = data["timeline"][0]
    assert lane["gaps_total"] == 12 and sum(lane["drops"].values()) > 8000  # 11 outages and the first connect
    assert lane["connected_joined_below_ns"] > 0  # thousands of intervals drawn at the figure's resolution
    assert data["stats"]["connections"]["groups"][0]["gaps"] == 12
    assert html.count("<use ") < 20_000  # the markers drawn are bounded too
