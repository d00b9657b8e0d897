"""The end-to-end harness: ime-sim → a client, in separate processes on loopback.

Every frame carries its send time (`timestamp`, µs, rendered when its batch is handed to the kernel);
the client's receive time minus it is the receive latency. The three clients measured side by side:

  ceiling   bare picows client that only counts frames (peers/ceiling.py)
  seed      websockets + json.loads + gzip file, as the API document's example grows (peers/seed_recorder.py)
  recorder  ime-record itself, one or more worker processes, default settings; latency from the receive
            times stored in its segments

Throughput runs use `ime-sim --rate 0` (each client gets frames as fast as it reads them, so nothing is
ever dropped: the figure is the zero-loss rate); latency runs use a fixed offered `--rate`.
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

from recorder.feed.message import parse_timestamp_ns
from recorder.histogram import Histogram
from recorder.segment.format import RecordKind
from recorder.segment.reader import discover, open_segment

HERE = Path(__file__).parent
QUICK = os.environ.get("IME_BENCH_QUICK") == "1"
TS_KEY = b'"timestamp":"'
WARMUP_S = 0.5  # throughput counts only after the connection has settled


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
            [sys.executable, "-m", "recorder.sim", "--rate", f"{rate:g}", "--contracts", str(contracts),
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

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.info["stats_url"], timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def sim(workdir: Path, rate: float, contracts: int = 50) -> Iterator[Sim]:
    s = Sim(workdir, rate, contracts)
    try:
        yield s
    finally:
        s.stop()


def latency_of(samples: list[tuple[int, str]], skip_s: float = WARMUP_S) -> Histogram:
    hist = Histogram()
    if not samples:
        return hist
    start = samples[0][0] + int(skip_s * 1e9)
    for received, stamp in samples:
        if received >= start:
            hist.record(received - parse_timestamp_ns(stamp))
    return hist


def run_ceiling(s: Sim, seconds: float, latency: bool) -> Run:
    args = [sys.executable, str(HERE / "peers" / "ceiling.py"), s.url, s.info["token"], str(seconds)]
    out = json.loads(subprocess.run(args + (["--latency"] if latency else []), capture_output=True, check=True,
                                    timeout=seconds + 60).stdout)
    return Run("ceiling", out["messages"], out["seconds"], latency_of(out["samples"]) if latency else Histogram())


def run_seed(s: Sim, seconds: float, workdir: Path) -> Run:
    out_file = workdir / f"seed-{time.monotonic_ns()}.jsonl.gz"
    args = [sys.executable, str(HERE / "peers" / "seed_recorder.py"), s.url, s.info["token"], str(seconds),
            str(out_file)]
    out = json.loads(subprocess.run(args, capture_output=True, check=True, timeout=seconds + 60).stdout)
    return Run("seed", out["messages"], out["seconds"], latency_of(out["samples"]),
               {"file_bytes": out_file.stat().st_size})


def worker_rss_kib(supervisor: int) -> int:
    """Sum of the resident sizes of the supervisor's children (the workers), from /proc."""
    total = 0
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    try:
        pids = children.read_text().split()
    except OSError:
        return 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" in cmd:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total = max(total, int(line.split()[1]))
    return total


def run_recorder(s: Sim, seconds: float, workdir: Path, shards: int = 1, latency: bool = False) -> Run:
    out_dir = workdir / f"rec-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "recorder.record", "--ids", ",".join(s.info["ids"]), "--shards", str(shards),
            "--base-url", s.info["base_url"], "--out", str(out_dir), "--duration", str(seconds), "-q"]
    env = {**os.environ, "IME_TOKEN": s.info["token"]}
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak_rss = 0
    while proc.poll() is None:
        peak_rss = max(peak_rss, worker_rss_kib(proc.pid))
        time.sleep(0.2)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"ime-record failed ({proc.returncode}): {stderr}")
    sent = sum(c["sent"] for c in s.stats()["connections"])
    return analyse_recording(out_dir, sent, latency, shards, peak_rss)


def analyse_recording(out_dir: Path, sent: int, latency: bool, shards: int, peak_rss_kib: int) -> Run:
    total = 0
    per_shard_times: dict[int, list[int]] = {}
    samples: list[tuple[int, str]] = []
    disk = 0
    raw = 0
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
                samples.append((rec.ts_ns, rec.payload[at:at + 27].decode()))
    # Throughput: each shard's settled window (after warm-up), summed over shards.
    rate = 0.0
    counted = 0
    for times in per_shard_times.values():
        times.sort()
        start = times[0] + int(WARMUP_S * 1e9)
        window = [t for t in times if t >= start]
        if len(window) > 1:
            rate += (len(window) - 1) / ((window[-1] - window[0]) / 1e9)
            counted += len(window)
    seconds = counted / rate if rate else 0.0
    samples.sort()
    run = Run("recorder" if shards == 1 else f"recorder x{shards}", counted, seconds,
              latency_of(samples) if latency else Histogram(),
              {"shards": shards, "recorded": total, "sent": sent, "lost": sent - total,
               "compression_ratio": round(raw / disk, 2) if disk else 0.0,
               "worker_peak_rss_mib": round(peak_rss_kib / 1024, 1)})
    return run


def write_result(path: Path, name: str, data: dict[str, Any]) -> None:
    """Results also go to a plain JSON file per run (for the report when pytest-benchmark is not used)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.json").write_text(json.dumps(data, indent=1))
