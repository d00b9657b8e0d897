"""The end-to-end harness: a feeder → a client, in separate processes on loopback.

Feeders:
  blaster   benchmarks/blaster.py: pre-rendered frames handed to the kernel in a loop, measurably faster than
            any client here (test_e2e checks it), so throughput ratios measure the clients, not the feeder
  ime-sim   `ime-sim --rate R`: a live market at a fixed offered rate; every frame carries its send time
            (`timestamp`, µs), so the client's receive time minus it is the receive latency

The three clients measured side by side:
  ceiling   bare picows client that only counts frames (peers/ceiling.py)
  seed      the API document's Python loop + json.loads + a gzip file at level 6 (peers/seed_recorder.py)
  recorder  ime-record itself, one or more worker processes, default settings; latency from the receive
            times stored in its segments

Every peer's throughput is counted over the same window of its own receive timeline: WARMUP_S after its first
message, for window_seconds(); several shards are summed over one window common to all of them. Loss is checked
against the feeder's own counters (blaster stats file, ime-sim /stats per connection, `dropped` included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samples import count_at, read_pairs, timeline_of

from recorder.histogram import Histogram
from recorder.model.record import RecordKind
from recorder.segment.reader import discover, open_segment

HERE = Path(__file__).parent
QUICK = os.environ.get("IME_BENCH_QUICK") == "1"
TS_KEY = b'"timestamp":"'
WARMUP_S = 0.5  # throughput counts only after the connection has settled (the same for every peer)
IN_FLIGHT_S = 0.1  # a client that hangs up (ceiling, seed) misses what was on the wire: this long at the rate


@dataclass
class Run:
    peer: str
    messages: int
    seconds: float
    latency: Histogram = field(default_factory=Histogram)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer": self.peer, "messages": self.messages, "seconds": round(self.seconds, 3),
                               "msgs_per_s": round(self.rate)}
        if self.latency.count:
            out["latency_us"] = {k: round(v, 1) for k, v in self.latency.summary().items()}
            out["latency_cdf_us"] = thin_cdf(self.latency)
        out.update(self.extra)
        return out


def thin_cdf(hist: Histogram, points: int = 200) -> list[tuple[float, float]]:
    cdf = hist.cdf()
    step = max(1, len(cdf) // points)
    return [(round(v / 1e3, 2), round(q, 5)) for v, q in cdf[::step]] + [(round(cdf[-1][0] / 1e3, 2), 1.0)]


class Sim:
    def __init__(self, workdir: Path, rate: float, contracts: int = 50, *extra: str) -> None:
        self.ready = workdir / f"sim-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorder.cli.sim", "--rate", f"{rate:g}", "--contracts", str(contracts),
             "--port", "0", "--http-port", "0", "--ready-file", str(self.ready), "-q", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ime-sim did not start")
            time.sleep(0.02)
        self.info: dict[str, Any] = json.loads(self.ready.read_text())

    @property
    def url(self) -> str:
        return self.info["base_url"] + "/contract/id?" + "&".join(f"contract_id={i}" for i in self.info["ids"])

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def ids(self) -> list[str]:
        return list(self.info["ids"])

    @property
    def token(self) -> str:
        return str(self.info["token"])

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.info["stats_url"], timeout=5) as r:
            return json.loads(r.read())

    def connections(self) -> dict[int, dict[str, int]]:
        """The sim's own counters per connection it ever served: messages sent, and dropped for a slow reader."""
        return {c["id"]: {"sent": c["sent"], "dropped": c["dropped"]} for c in self.stats()["connections"]}

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the feeder writes its counters and logs on the way out), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def sim(workdir: Path, rate: float, contracts: int = 50, *extra: str) -> Iterator[Sim]:
    """ime-sim at `rate`; `extra` are more ime-sim options (faults: `--delay-every`, ...)."""
    s = Sim(workdir, rate, contracts, *extra)
    try:
        yield s
    finally:
        s.stop()




class Blaster:
    """benchmarks/blaster.py in its own process; per-connection counters from its stats file."""

    def __init__(self, workdir: Path) -> None:
        stamp = time.monotonic_ns()
        self.ready = workdir / f"blaster-{stamp}.json"
        self.stats_file = workdir / f"blaster-{stamp}.stats"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "blaster.py"), str(self.ready), str(self.stats_file)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the blaster did not start")
            time.sleep(0.02)
        self.info: dict[str, Any] = json.loads(self.ready.read_text())
        self.ids = [str(1001 + i) for i in range(50)]
        self.token = "blaster-accepts-any-token"

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def url(self) -> str:
        return self.base_url + "/contract/id?" + "&".join(f"contract_id={i}" for i in self.ids)

    def connections(self, wait_for: int = 0, timeout: float = 10.0) -> dict[int, dict[str, int]]:
        """Counters of the connections that have ended (a line each); waits until `wait_for` of them have."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.stats_file.read_text().splitlines() if self.stats_file.exists() else []
            if len(lines) >= wait_for or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out = {}
        for line in lines:
            c = json.loads(line)
            out[c["conn"]] = {"sent": c["sent"], "dropped": 0, "clean_close": c["closed_by"] == "client close"}
        return out

    def stop(self) -> None:
        stop_process(self.proc)


Feed = Sim | Blaster


@contextlib.contextmanager
def blaster(workdir: Path) -> Iterator[Blaster]:
    b = Blaster(workdir)
    try:
        yield b
    finally:
        b.stop()


def new_connections(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> dict[str, int]:
    """The feeder's counters summed over the connections a run opened (not every connection it ever served)."""
    fresh = [c for k, c in after.items() if k not in before]
    return {"connections": len(fresh), "sent": sum(c["sent"] for c in fresh),
            "dropped": sum(c["dropped"] for c in fresh)}


def window_seconds(seconds: float) -> float:
    """The throughput window every peer is measured over: after WARMUP_S, stopping WARMUP_S before the end."""
    return seconds - 2 * WARMUP_S - 0.5  # the recorder's --duration also covers its start-up: leave it room


def window_rate(timelines: list[list[tuple[int, int]]], seconds: float) -> tuple[float, float, dict[str, Any]]:
    """Messages and seconds in one window common to all timelines (several shards are summed over it)."""
    timelines = [t for t in timelines if t]
    if not timelines:
        return 0.0, 0.0, {"window_s": 0.0}
    start = max(t[0][0] for t in timelines) + int(WARMUP_S * 1e9)
    end = start + int(window_seconds(seconds) * 1e9)
    last = min(t[-1][0] for t in timelines)
    short = end > last
    end = min(end, last)
    if end <= start:
        return 0.0, 0.0, {"window_s": 0.0, "window_short": True}
    messages = sum(count_at(t, end) - count_at(t, start) for t in timelines)
    return messages, (end - start) / 1e9, {"window_s": round((end - start) / 1e9, 3), "window_short": short}


def latency_of(samples: list[tuple[int, int]], skip_s: float = WARMUP_S) -> Histogram:
    """(receive ns, send ns) pairs after the warm-up into a histogram."""
    hist = Histogram()
    if not samples:
        return hist
    start = samples[0][0] + int(skip_s * 1e9)
    for received, sent in samples:
        if received >= start:
            hist.record(received - sent)
    return hist


def check_client_loss(run: Run, counters: dict[str, int], rate: float, hung_up: bool) -> None:
    """Loss against the feeder's counters. A client that hangs up may miss only what was on the wire."""
    received = run.extra["received"]
    run.extra.update({"feeder_sent": counters["sent"], "feeder_dropped": counters["dropped"],
                      "lost": counters["sent"] - received})
    assert counters["connections"] >= 1, counters
    assert counters["dropped"] == 0, f"{run.peer}: the feeder dropped {counters['dropped']} for a slow reader"
    if hung_up:
        assert 0 <= counters["sent"] - received <= rate * IN_FLIGHT_S + 1000, (run.peer, counters, received)
    else:
        assert received == counters["sent"], (run.peer, counters, received)


def run_peer_script(script: str, feed: Feed, seconds: float, workdir: Path, *flags: str) -> tuple[dict[str, Any], Path]:
    out = workdir / f"{script}-{time.monotonic_ns()}"
    args = [sys.executable, str(HERE / "peers" / f"{script}.py"), feed.url, feed.token, str(seconds), str(out), *flags]
    done = subprocess.run(args, capture_output=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout), out


def run_ceiling(feed: Feed, seconds: float, workdir: Path, latency: bool) -> Run:
    out, files = run_peer_script("ceiling", feed, seconds, workdir, *(["--latency"] if latency else []))
    messages, window_s, info = window_rate([read_pairs(f"{files}.timeline")], seconds)
    hist = latency_of(read_pairs(f"{files}.samples")) if latency else Histogram()
    return Run("ceiling", round(messages), window_s, hist,
               {"received": out["messages"], "peak_rss_mib": out["peak_rss_mib"], **info})


def run_seed(feed: Feed, seconds: float, workdir: Path, latency: bool) -> Run:
    out, files = run_peer_script("seed_recorder", feed, seconds, workdir)
    messages, window_s, info = window_rate([read_pairs(f"{files}.timeline")], seconds)
    hist = latency_of(read_pairs(f"{files}.samples")) if latency else Histogram()
    return Run("seed", round(messages), window_s, hist,
               {"received": out["messages"], "file_bytes": Path(f"{files}.jsonl.gz").stat().st_size, **info})


def proc_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far; OSError when it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def worker_pids(supervisor: int) -> list[int]:
    """The recorder's workers: named ime-rec-sNN, forked by the supervisor's fork server (its grandchildren)."""
    out = []
    for pid in descendants(supervisor):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("ime-rec-s"):
                out.append(pid)
        except OSError:
            continue
    return out


def run_recorder(feed: Feed, seconds: float, workdir: Path, shards: int = 1, latency: bool = False,
                 extra_args: tuple[str, ...] = ()) -> Run:
    out_dir = workdir / f"rec-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "recorder.cli.record", "--ids", ",".join(feed.ids), "--shards", str(shards),
            "--base-url", feed.base_url, "--out", str(out_dir), "--duration", str(seconds), "-q", *extra_args]
    env = {**os.environ, "IME_TOKEN": feed.token}
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # The largest worker's RSS over time (one sample every 0.2 s): the peak is gated, the curve is reported.
    rss_curve: list[tuple[float, float]] = []
    cpu: dict[int, float] = {}  # each worker's CPU seconds, last seen (a worker exits before the supervisor)
    t0 = time.monotonic()
    while proc.poll() is None:
        pids = worker_pids(proc.pid)
        rss = max((proc_rss_kib(p) for p in pids), default=0)
        for p in pids:
            with contextlib.suppress(OSError):
                cpu[p] = max(cpu.get(p, 0.0), cpu_seconds(p))
        rss_curve.append((round(time.monotonic() - t0, 1), round(rss / 1024, 1)))
        time.sleep(0.1)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"ime-record failed ({proc.returncode}): {stderr}")
    run = analyse_recording(out_dir, seconds, latency, shards, rss_curve)
    # The last sample is up to 0.1 s before a worker's exit: a slight undercount, the same for every run.
    run.extra["worker_cpu_s"] = round(sum(cpu.values()), 3)
    return run


def analyse_recording(out_dir: Path, seconds: float, latency: bool, shards: int,
                      rss_curve: list[tuple[float, float]]) -> Run:
    total = 0
    per_shard_times: dict[int, list[int]] = {}
    samples: list[tuple[int, int]] = []
    disk = 0
    raw = 0
    from recorder.feed.message import parse_timestamp_ns

    for path in discover([out_dir]):
        seg = open_segment(path)
        disk += path.stat().st_size
        raw += seg.raw_bytes
        times = per_shard_times.setdefault(seg.shard, [])
        for rec in seg.iter_records():
            if rec.kind != RecordKind.TEXT:
                continue
            total += 1
            times.append(rec.ts_ns)
            if latency:
                at = rec.payload.find(TS_KEY) + len(TS_KEY)
                samples.append((rec.ts_ns, parse_timestamp_ns(rec.payload[at:at + 27].decode())))
    timelines = []
    for times in per_shard_times.values():
        times.sort()
        timelines.append(timeline_of(times))
    messages, window_s, info = window_rate(timelines, seconds)
    samples.sort()
    peak = max((r for _, r in rss_curve), default=0.0)
    step = max(1, len(rss_curve) // 40)
    return Run("recorder" if shards == 1 else f"recorder x{shards}", round(messages), window_s,
               latency_of(samples) if latency else Histogram(),
               {"shards": shards, "received": total, "recorded": total,
                "compression_ratio": round(raw / disk, 2) if disk else 0.0, "disk_bytes": disk,
                "worker_peak_rss_mib": peak, "worker_rss_mib_over_time": rss_curve[::step], **info})


def write_result(path: Path, name: str, data: dict[str, Any]) -> None:
    """Results also go to a plain JSON file per run (for the report when pytest-benchmark is not used)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.json").write_text(json.dumps(data, indent=1))
