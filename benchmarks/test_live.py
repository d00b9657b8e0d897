"""Live fan-out benchmarks: relay latency and throughput cost, NATS publish throughput, measured in one run.

    .venv/bin/pytest benchmarks/test_live.py                      # full: 8 s per run
    IME_BENCH_QUICK=1 .venv/bin/pytest benchmarks/test_live.py    # CI: 3 s per run

relay latency   ime-sim at 20k msgs/s (and 1k in full mode) → ime-record --relay → one relay client; per
                message the client's receive time minus the recorder's receive time (from the segment files,
                joined by payload hash): what the relay adds after the recorder has the message.
relay cost      recorder throughput fed by the pre-framed blaster (as the Performance table's throughput: the
                feeder costs ~0.15 µs a message, so the ratio measures the recorder, not the feeder) with
                --relay and 10 clients reading every contract, and with the 10 on disjoint tenths of the
                contracts (each message sent once), against the same recorder without --relay: each round
                with a fresh blaster, the median of the rounds' ratios.
nats publish    the hub's NatsPublisher alone against a local nats-server -js: messages/s confirmed stored by
                JetStream; and "a live output never costs the recording a message": ime-sim at a fixed 100k
                msgs/s recorded with --publish (and without, for comparison). Gated in full mode: 0 recorded
                messages lost with --publish (every message the simulator published is in the segment files).
                The stream may lag or shed when the machine is short of CPU (the hub yields to the workers):
                reported with its count, never gated.

Beside each throughput the CPU time per recorded message of every process involved (worker, hub, feeder,
relay clients, nats-server) and the load average are reported: they all share the 2 cores with the worker, so
on this machine the ratios are bounded by their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
import xxhash
from e2e import (
    HERE,
    QUICK,
    WARMUP_S,
    Blaster,
    Feed,
    Run,
    analyse_recording,
    blaster,
    cpu_seconds,
    descendants,
    new_connections,
    sim,
    stop_process,
)

from recorder.histogram import Histogram
from recorder.live.publisher import NatsPublisher
from recorder.model.record import RecordKind, Row
from recorder.model.settings import LiveSettings
from recorder.segment.reader import discover, open_segment

SECONDS = 3.0 if QUICK else 8.0
RELAY_CLIENTS = 10
NATS_MESSAGES = 200_000 if QUICK else 1_000_000
# Issue 12's targets, reported with every run (extra_info "targets_met"); the relay ratio counts as met only when no
# client was cut. Figures of the last full run are in docs/performance.md ("Live fan-out").
TARGETS = {"relay_p99_us_max": 150.0, "relay_throughput_ratio": 0.8, "nats_msgs_per_s": 100_000.0,
           "publish_rate_ratio": 0.99}
# Gated floors: regressions from the measured figures (with room for a loaded machine), in both modes, so the gate
# can fail (a relay that adds 20 ms or cuts recording to half, a publisher at half its rate, or a recorder that
# records a tenth less of a 100k msgs/s feed once it publishes).
FLOORS = {"relay_p99_us_max": 20_000.0, "relay_throughput_ratio": 0.5, "nats_msgs_per_s": 50_000.0,
          "publish_rate_ratio": 0.9}
if QUICK:
    # A 3 s run beside the blaster on a shared 2-core runner: p99 ranged 1.7-46 ms and the ratios 0.23-0.85 at load
    # 4-9. The quick floors catch a collapse only.
    FLOORS.update({"relay_p99_us_max": 100_000.0, "relay_throughput_ratio": 0.2, "nats_msgs_per_s": 10_000.0,
                   "publish_rate_ratio": 0.5})
ROUNDS = 1 if QUICK else 3
PUBLISH_RATE = 100_000
RESULTS: dict[str, float] = {}
NATS_SERVER = shutil.which("nats-server")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_recorder_live(s: Feed, seconds: float, workdir: Path, extra: list[str], clients: int = 0,
                      latency: bool = False, mode: str = "--latency",
                      also: dict[str, int] | None = None, nats_may_lack: bool = False,
                      env: dict[str, str] | None = None) -> tuple[Run, dict[str, Any]]:
    """One recorder run; `also` names other processes (nats-server) whose CPU time over the run is reported; `env`
    is added to the recorder's environment (IME_NATIVE=0: the Python paths).

    `nats_may_lack`: exit 1 is accepted when what failed is NATS lacking messages (it then says so in one line);
    the summary's NATS figures are returned either way (`nats`)."""
    out_dir = workdir / f"rec-{time.monotonic_ns()}"
    before = s.connections()
    port = free_port()
    relay = ["--relay", f"127.0.0.1:{port}"] if clients else []
    args = [sys.executable, "-m", "recorder.cli.record", "--ids", ",".join(s.ids), "--base-url",
            s.base_url, "--out", str(out_dir), "--duration", str(seconds), "-q", *relay, *extra]
    proc = subprocess.Popen(args, env={**os.environ, **(env or {}), "IME_TOKEN": s.token}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client_out: dict[str, Any] = {}
    client = None
    if clients:
        url = (f"ws://127.0.0.1:{port}/data-engine/ime/live/data/websocket/contract/id?"
               + "&".join(f"contract_id={i}" for i in s.ids))
        result = workdir / f"clients-{time.monotonic_ns()}.json"
        client = subprocess.Popen([sys.executable, str(HERE / "peers" / "relay_client.py"), url, str(clients),
                                   str(seconds + 30), str(result)] + ([mode] if latency or mode != "--latency" else []),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu: dict[int, tuple[str, float]] = {}
    # The other processes sharing the 2 cores: the feeder, the relay clients, nats-server.
    others = {"feeder": s.proc.pid, **(also or {})}
    others_cpu0 = {name: cpu_seconds(pid) for name, pid in others.items()}
    client_cpu = 0.0
    deadline = time.monotonic() + seconds + 90
    while proc.poll() is None and time.monotonic() < deadline:
        sample_children_cpu(proc.pid, cpu)
        if client is not None:
            with contextlib.suppress(OSError):
                client_cpu = cpu_seconds(client.pid)
        time.sleep(0.1)
    others_cpu = {name: cpu_seconds(pid) - others_cpu0[name] for name, pid in others.items()}
    if client is not None:
        others_cpu["clients"] = client_cpu
    _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    stderr = err.decode()
    nats_only = nats_may_lack and proc.returncode == 1 and stderr.count("ime-record: error:") == 1 and \
        "ime-record: error: NATS lacks" in stderr
    if proc.returncode != 0 and not nats_only:
        raise RuntimeError(f"ime-record failed ({proc.returncode}): {stderr}")
    if client is not None:
        _, cerr = client.communicate(timeout=60)
        if client.returncode != 0:
            raise RuntimeError(f"relay client failed: {cerr.decode()}")
        client_out = json.loads(result.read_bytes())
    # Only this run's connections count (the feeder serves every run of the module); the blaster lists a
    # connection once it has closed.
    after = s.connections(wait_for=len(before) + 1) if isinstance(s, Blaster) else s.connections()
    counters = new_connections(before, after)
    run = analyse_recording(out_dir, seconds, latency, 1, [])
    run.extra["lost"] = counters["sent"] - run.extra["recorded"]
    run.extra["feeder_dropped"] = counters["dropped"]
    recorded = run.extra["recorded"] or 1
    # CPU seconds per recorded message, by process kind: what the relay or publisher costs each process,
    # independent of how busy the (shared) machine was.
    for kind in ("worker", "hub"):
        used = sum(c for k, c in cpu.values() if k == kind)
        if used:
            run.extra[f"{kind}_cpu_us_per_msg"] = round(used / recorded * 1e6, 2)
    for name, used in others_cpu.items():
        run.extra[f"{name}_cpu_us_per_msg"] = round(used / recorded * 1e6, 2)
    return run, {**client_out, "out_dir": out_dir, "nats": nats_summary(stderr)}


def nats_summary(stderr: str) -> dict[str, int]:
    """The exit summary's NATS figures: shed (not handed over by the workers, dropped from the full backlog), and
    what NATS did not confirm in all."""
    import re

    def grab(pattern: str) -> int:
        m = re.search(pattern, stderr)
        return int(m.group(1)) if m else 0

    return {"not_handed_over": grab(r"(\d+) not handed over by workers"),
            "backlog_dropped": grab(r"backlog \d+, (\d+) dropped"),
            "not_confirmed": grab(r"NATS did not confirm (\d+) of")}


def sample_children_cpu(parent: int, cpu: dict[int, tuple[str, float]]) -> None:
    """The last CPU time (user + system) seen for each worker (ime-rec-sNN, forked by the supervisor's fork server)
    and the hub (ime-live-hub) of the supervisor."""
    for pid in descendants(parent):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            used = cpu_seconds(pid)
        except OSError:
            continue
        if comm == "ime-live-hub" or comm.startswith("ime-rec-s"):
            cpu[pid] = ("hub" if comm == "ime-live-hub" else "worker", used)


def relay_latency(out_dir: Path, samples: list[list[int]]) -> Histogram:
    recorded: dict[int, int] = {}
    ambiguous: set[int] = set()
    for path in discover([out_dir]):
        for rec in open_segment(path).iter_records():
            if rec.kind == RecordKind.TEXT:
                h = xxhash.xxh3_64_intdigest(rec.payload)
                if h in recorded:
                    ambiguous.add(h)  # the same bytes twice: which copy the client saw is unknowable
                recorded[h] = rec.ts_ns
    hist = Histogram()
    if not samples:
        return hist
    start = samples[0][0] + int(WARMUP_S * 1e9)
    for received, h in samples:
        if received >= start and h in recorded and h not in ambiguous:
            hist.record(received - recorded[h])
    return hist


def once(benchmark: Any, fn: Any) -> Any:
    box: list[Any] = []
    benchmark.pedantic(lambda: box.append(fn()), rounds=1, iterations=1)
    return box[0]


# 20k msgs/s is gated; 1k msgs/s (full mode only) shows the relay's hops on a machine that is not busy.
LATENCY_RATES = [20_000] if QUICK else [20_000, 1_000]


@pytest.mark.parametrize("rate", LATENCY_RATES)
def test_relay_added_latency(benchmark, tmp_path, rate):
    with sim(tmp_path, rate) as s:
        run, client = once(benchmark, lambda: run_recorder_live(s, SECONDS, tmp_path, [], clients=1, latency=True))
    hist = relay_latency(client["out_dir"], client["samples"])
    assert hist.count > rate * (SECONDS - 2), f"too few joined samples ({hist.count})"
    summary = {k: round(v, 1) for k, v in hist.summary().items()}
    if rate == 20_000:
        RESULTS["relay_p99_us"] = hist.percentile(99) / 1e3
    # The baseline of the same run: the feed's own hop (simulator send → recorder receive), one loopback socket
    # between two processes on the same cores. The relay adds two such hops (worker → hub → client).
    feed = run.latency
    benchmark.extra_info.update({"key": f"live/relay_latency_{rate // 1000}k", "rate": rate, "samples": hist.count,
                                 "added_latency_us": summary, "recorder_lost": run.extra["lost"],
                                 "feed_hop_latency_us": {k: round(v, 1) for k, v in feed.summary().items()},
                                 "relay_p99_vs_feed_hop_p99": round(hist.percentile(99) / feed.percentile(99), 2),
                                 "load_average": os.getloadavg()[0]})


def _cpu_figures(runs: dict[str, Run]) -> dict[str, float]:
    return {f"{name}_{k}": v for name, r in runs.items() for k, v in r.extra.items() if k.endswith("_cpu_us_per_msg")}


def _cut(client: dict[str, Any]) -> int:
    """Clients served less than the run minus 1 s were cut (too slow, or messages that never reached the hub)."""
    return sum(1 for t in client.get("served_s", []) if t < SECONDS - 1)


def test_relay_cost_on_recorder_throughput(benchmark, tmp_path):
    """Blaster-fed, same round: without live outputs, with --relay and 10 clients on every contract, and with the 10
    on disjoint tenths of the contracts. The median of ROUNDS rounds' ratios, each round with a fresh blaster."""
    rounds: list[dict[str, Any]] = []

    def one_round() -> dict[str, Any]:
        with blaster(tmp_path) as feed:
            base, _ = run_recorder_live(feed, SECONDS, tmp_path, [])
            relay, client = run_recorder_live(feed, SECONDS, tmp_path, [], clients=RELAY_CLIENTS, mode="--bytes")
            # Bots that trade a few contracts each: the relay delivers each message once instead of ten times.
            split, split_client = run_recorder_live(feed, SECONDS, tmp_path, [], clients=RELAY_CLIENTS,
                                                    mode="--split")
        for run in (base, relay, split):
            assert run.extra["lost"] == 0, f"the recorder lost {run.extra['lost']} of what the blaster sent"
        return {"base": base, "relay": relay, "split": split, "cut": _cut(client), "split_cut": _cut(split_client),
                "client_bytes": client.get("bytes")}

    rounds.append(once(benchmark, one_round))
    rounds += [one_round() for _ in range(ROUNDS - 1)]

    ratio = statistics.median([r["relay"].rate / r["base"].rate for r in rounds])
    split_ratio = statistics.median([r["split"].rate / r["base"].rate for r in rounds])
    cut = sum(r["cut"] for r in rounds)
    RESULTS["relay_throughput_ratio"] = ratio
    RESULTS["relay_clients_cut"] = cut
    last = rounds[len(rounds) // 2]
    benchmark.extra_info.update({
        **_cpu_figures({"without": last["base"], "relay": last["relay"], "relay_split": last["split"]}),
        "key": "live/recorder_throughput", "feeder": "blaster", "load_average": os.getloadavg()[0],
        "relay_clients": RELAY_CLIENTS, "rounds": len(rounds),
        "without_msgs_per_s": [round(r["base"].rate) for r in rounds],
        "with_relay_msgs_per_s": [round(r["relay"].rate) for r in rounds],
        "with_relay_split_msgs_per_s": [round(r["split"].rate) for r in rounds],
        "relay_throughput_ratio": round(ratio, 3), "relay_split_throughput_ratio": round(split_ratio, 3),
        "relay_ratio_rounds": [round(r["relay"].rate / r["base"].rate, 3) for r in rounds],
        "relay_split_ratio_rounds": [round(r["split"].rate / r["base"].rate, 3) for r in rounds],
        "relay_clients_cut": [r["cut"] for r in rounds], "relay_split_clients_cut": [r["split_cut"] for r in rounds],
        "relay_client_bytes": last["client_bytes"],
    })


@pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed")
def test_publish_at_100k_never_costs_the_recording_a_message(benchmark, tmp_path):
    """ime-sim at PUBLISH_RATE recorded with --publish (a fresh nats-server -js on loopback, sharing the 2 cores):
    every message the simulator published must be recorded. Also: the same recorder without --publish (the
    machine's own condition), what the stream holds, what the hub shed, receive latency and CPU per process."""
    store = tempfile.mkdtemp(prefix="nats-bench-")
    nats_proc = None
    try:
        with sim(tmp_path, PUBLISH_RATE) as s:
            base, _ = run_recorder_live(s, SECONDS, tmp_path, [], latency=True)
            port = free_port()
            nats_proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            publish, out = once(benchmark, lambda: run_recorder_live(
                s, SECONDS, tmp_path, ["--publish", f"nats://127.0.0.1:{port}"], latency=True,
                also={"nats_server": nats_proc.pid}, nats_may_lack=True))
            stored = uvloop.run(_stream_messages(port))
    finally:
        if nats_proc is not None:
            stop_process(nats_proc)
        shutil.rmtree(store, ignore_errors=True)
    recorded = publish.extra["recorded"]
    lost = publish.extra["lost"] + publish.extra["feeder_dropped"]
    lost_without = base.extra["lost"] + base.extra["feeder_dropped"]
    ratio = publish.rate / base.rate
    RESULTS["publish_rate_ratio"] = ratio
    RESULTS["publish_lost"] = lost
    shed = out["nats"]["not_handed_over"] + out["nats"]["backlog_dropped"]
    benchmark.extra_info.update({
        **_cpu_figures({"without": base, "publish": publish}),
        "key": "live/publish_at_rate", "offered_msgs_per_s": PUBLISH_RATE, "load_average": os.getloadavg()[0],
        "without_msgs_per_s": round(base.rate), "with_publish_msgs_per_s": round(publish.rate),
        "publish_rate_ratio": round(ratio, 3),
        "lost_without": lost_without, "lost_with_publish": lost,
        "receive_p99_us_without": round(base.latency.percentile(99) / 1e3, 1),
        "receive_p99_us_with_publish": round(publish.latency.percentile(99) / 1e3, 1),
        "recorded_with_publish": recorded, "stream_messages": stored, "stream_missing": recorded - stored,
        "shed": shed, "nats_not_confirmed": out["nats"]["not_confirmed"], **{f"nats_{k}": v for k, v in
                                                                           out["nats"].items()},
    })
    if not QUICK:
        # The gate: a live output must never cost the recording a message. The stream may lag or shed (counted
        # above); the recording may not. A recorder that loses messages without --publish too was on a machine
        # too busy for 100k msgs/s, which the message says.
        assert lost == 0, (f"with --publish the recorder lost {lost} of the messages the simulator published "
                           f"(without --publish, in the same run: {lost_without} lost; load average "
                           f"{os.getloadavg()[0]:.1f})")


async def _stream_messages(port: int) -> int:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        info = await nc.jetstream().stream_info("IME")
        return int(info.state.messages)
    except NotFoundError:  # the hub never got the CPU to make it: the stream holds nothing
        return 0
    finally:
        await nc.close()


@pytest.mark.skipif(NATS_SERVER is None, reason="nats-server is not installed")
def test_nats_publish_throughput(benchmark, tmp_path):
    from workload import sim_records

    records = sim_records(NATS_MESSAGES, rate=100_000)
    port = free_port()
    proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        server_cpu0 = cpu_seconds(proc.pid)
        seconds, own_cpu = once(benchmark, lambda: uvloop.run(_publish_all(port, records)))
        server_cpu = cpu_seconds(proc.pid) - server_cpu0
    finally:
        stop_process(proc)
    rate = len(records) / seconds
    RESULTS["nats_msgs_per_s"] = rate
    # CPU per message tells what the wall-clock rate would be on idle cores (the machine may be shared).
    benchmark.extra_info.update({"key": "live/nats_publish", "messages": len(records),
                                 "seconds": round(seconds, 3), "msgs_per_s": round(rate),
                                 "publisher_cpu_us_per_msg": round(own_cpu / len(records) * 1e6, 2),
                                 "nats_server_cpu_us_per_msg": round(server_cpu / len(records) * 1e6, 2),
                                 "load_average": os.getloadavg()[0]})


async def _publish_all(port: int, records: tuple[tuple[int, bytes], ...]) -> tuple[float, float]:
    settings = LiveSettings(address="\0unused", kind="id", contracts=(), nats_url=f"nats://127.0.0.1:{port}",
                            nats_backlog=len(records) + 1)
    pub = NatsPublisher(settings)
    # The records' receive times are the workload's, long past: in the hub that would read as a hub far behind
    # the workers, and the publisher would yield (publisher.YIELD_LAG_NS). Alone here, it never does.
    pub._lagging = lambda lag_ns: None  # type: ignore[method-assign]
    pub.start()
    while not pub.connected:
        await asyncio.sleep(0.01)
    # What the hub hands the publisher, built before the clock starts: decoding and routing are the hub's cost
    # (measured with the relay), not the publisher's. The contract as the hub's router finds it, cheaply: the
    # simulator's ids are in the prefix.
    chunk = 1000
    batches = []
    for i in range(0, len(records), chunk):
        part = records[i:i + chunk]
        rows: list[Row] = [(ts, 0, 1, p) for ts, p in part]
        contracts = [p[p.find(b'"contractId":"') + 14:p.find(b'"', p.find(b'"contractId":"') + 14)].decode()
                     for _, p in part]
        batches.append((rows, contracts))
    t0 = time.perf_counter()
    c0 = time.process_time()
    for rows, contracts in batches:
        pub.enqueue(rows, contracts)
        await asyncio.sleep(0)
    while pub.confirmed < len(records):
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    assert pub.dropped == 0
    await pub.close()
    return elapsed, cpu


def test_worker_live_output_cost(benchmark):
    """What the worker's receive path pays per first arrival: LiveOutput.__call__, socket sends included."""
    from recorder.live.output import LiveOutput

    ns = once(benchmark, lambda: uvloop.run(_output_cost(LiveOutput)))
    RESULTS["worker_output_ns"] = ns
    benchmark.extra_info.update({"key": "live/worker_output_cost", "ns_per_message": round(ns)})


async def _output_cost(cls: Any) -> float:
    import uuid

    address = f"\0ime-bench-{uuid.uuid4().hex}"

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            pass

    server = await asyncio.get_running_loop().create_unix_server(Sink, address)
    out = cls(address, 0, 64 << 20)
    payload = b"x" * 600
    n = 100_000 if QUICK else 500_000
    t0 = time.perf_counter()
    for i in range(n // 100):
        for k in range(100):  # ~100 frames per socket read at high rates
            out(i, k, 1, payload)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    out.close()
    server.close()
    assert out.dropped == 0
    return elapsed / n * 1e9


def test_hub_fanout_cost(benchmark):
    """What the hub pays per message to decode a worker's stream, name the contract and frame it for the relay's
    outputs, on the simulator's market (50 contracts), 10 outputs on disjoint tenths of them. (A C twin, _fanout.c,
    did this in ~0.25 µs against ~0.94 and was dropped: the relay's figures did not follow, recorder/live/fanout.py.)"""
    from workload import sim_records

    from recorder.live.fanout import Fanout
    from recorder.live.route import Router
    from recorder.live.wire import hello, record_header

    records = sim_records(20_000 if QUICK else 100_000, contracts=50)
    contracts = sorted({p[p.find(b'"contractId":"') + 14:p.find(b'"', p.find(b'"contractId":"') + 14)].decode()
                        for _, p in records})
    routes = {c: (i % RELAY_CLIENTS,) for i, c in enumerate(contracts)}
    body = b"".join(record_header(len(p), seq, ts, 0, 1) + p for seq, (ts, p) in enumerate(records))
    step = 64 << 10  # what one read of the worker's socket brings, about
    chunks = [hello(0, 1) + body[:step]] + [body[i:i + step] for i in range(step, len(body), step)]

    def cost() -> float:
        fanout = Fanout(Router())
        fanout.set_routes(routes, RELAY_CLIENTS)
        link = fanout.new_link()
        t0 = time.perf_counter()
        for chunk in chunks:
            fanout.feed(link, chunk)
            fanout.take()
        return (time.perf_counter() - t0) / len(records) * 1e9

    ns = once(benchmark, cost)
    benchmark.extra_info.update({"key": "live/hub_fanout_cost", "ns_per_message": round(ns),
                                 "outputs": RELAY_CLIENTS, "messages": len(records)})


def test_live_floors(benchmark):
    """The issue's targets, from the measurements above (same run)."""
    needed = ["relay_p99_us", "relay_throughput_ratio"]
    missing = [k for k in needed if k not in RESULTS]
    if missing:
        pytest.skip(f"run the whole module for the floors (missing {missing})")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    values = {"relay_p99_us_max": RESULTS["relay_p99_us"], "relay_throughput_ratio": RESULTS["relay_throughput_ratio"]}
    for name in ("nats_msgs_per_s", "publish_rate_ratio"):
        if name in RESULTS:
            values[name] = RESULTS[name]
    benchmark.extra_info.update({"key": "live/floors", "quick": QUICK, "floors": FLOORS,
                                 "values": {k: round(v, 3) for k, v in values.items()}})

    def meets(name: str, value: float, bound: float) -> bool:
        return value <= bound if name.endswith("_max") else value >= bound

    met = {k: meets(k, v, TARGETS[k]) for k, v in values.items()}
    met["relay_throughput_ratio"] = met["relay_throughput_ratio"] and RESULTS.get("relay_clients_cut", 0) == 0
    benchmark.extra_info["targets"] = TARGETS
    benchmark.extra_info["targets_met"] = met
    failures = [f"{name} = {value:.3f} (floor {FLOORS[name]})" for name, value in values.items()
                if not meets(name, value, FLOORS[name])]
    lost = RESULTS.get("publish_lost")
    if lost and not QUICK:
        failures.append(f"with --publish the recorder lost {lost:.0f} messages")
    benchmark.extra_info["failures"] = failures
    assert not failures, "; ".join(failures)
