"""Render pytest-benchmark JSON (benchmarks/) into a markdown report and PNG plots.

    python tools/bench_report.py benchmarks/results/latest.json [--out benchmarks/results]

Writes OUT/REPORT.md, OUT/latency_cdf.png (receive latency CDF per peer at 20k msgs/s) and
OUT/throughput_shards.png (zero-loss msgs/s per peer and shard count).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load(paths: list[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """extra_info by key (benchmarks that set one) or by test name; plus the machine info of the last file."""
    found: dict[str, dict[str, Any]] = {}
    machine: dict[str, Any] = {}
    for path in paths:
        data = json.loads(path.read_text())
        machine = {**data.get("machine_info", machine), **({"note": data["note"]} if "note" in data else {})}
        for bench in data.get("benchmarks", []):
            info = dict(bench.get("extra_info", {}))
            found[str(info.get("key") or bench["name"])] = info
    return found, machine


def fmt_rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def latency_row(name: str, info: dict[str, Any] | None) -> str:
    if not info or "latency_us" not in info:
        return f"| {name} | – | – | – | – | – |"
    lat = info["latency_us"]
    return (f"| {name} | {lat['p50']:,.0f} | {lat['p90']:,.0f} | {lat['p99']:,.0f} | {lat['p99.9']:,.0f} "
            f"| {lat['max']:,.0f} |")


def markdown(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    out: list[str] = ["# ime-recorder benchmark report", ""]
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    out.append(f"Machine: {cpu}, {machine.get('cpu', {}).get('count', '?')} cores, "
               f"Python {machine.get('python_version', '?')}. Peers run side by side in the same run; "
               "ratios are what CI checks.")
    if machine.get("note"):
        out += ["", f"**Note:** {machine['note']}."]
    out.append("")

    tp = {p: results.get(f"throughput/{p}", {}).get("msgs_per_s") for p in ("ceiling", "seed", "recorder")}
    if any(tp.values()):
        window = results.get("throughput/ceiling", {}).get("window_s")
        out += ["## Zero-loss throughput, one connection (fed by the pre-framed blaster)", "",
                f"Every client is counted over the same window of its own timeline ({window} s after a 0.5 s "
                "warm-up); the recorder's count is checked against what the blaster sent.", "",
                "| client | msgs/s | vs ceiling | notes |", "|---|---:|---:|---|"]
        feeder = results.get("throughput/feeder")
        if feeder:
            out.append(f"| feeder capacity (blaster → byte drain) | {fmt_rate(feeder.get('msgs_per_s'))} | "
                       f"{feeder['msgs_per_s'] / tp['ceiling']:.2f}× | {feeder.get('mb_per_s')} MB/s; what the "
                       "feeder pushes when the reader costs nothing |" if tp["ceiling"] else "")
        ceiling = tp["ceiling"] or 0
        notes = {"ceiling": "bare picows, counts frames only",
                 "seed": "the API example's `async for` loop + json.loads + gzip level 6",
                 "recorder": "ime-record, 1 worker, default settings"}
        for peer in ("ceiling", "seed", "recorder"):
            rate = tp[peer]
            ratio = f"{rate / ceiling:.2f}×" if rate and ceiling else "–"
            info = results.get(f"throughput/{peer}", {})
            extra = notes[peer]
            if info.get("rate_rounds"):
                extra += "; median of rounds " + ", ".join(fmt_rate(v) for v in info["rate_rounds"])
            if peer == "recorder" and info:
                extra += (f"; lost {info.get('lost')} of {info.get('feeder_sent')} sent, compression "
                          f"{info.get('compression_ratio')}×, worker peak RSS {info.get('worker_peak_rss_mib')} MiB")
            out.append(f"| {peer} | {fmt_rate(rate)} | {ratio} | {extra} |")
        scaling = [(1, results.get("throughput/recorder", {}))] + [
            (n, results.get(f"throughput/recorder x{n}", {})) for n in (2, 4)]
        out += ["", "| recorder shards | total msgs/s (one common window) | lost | worker peak RSS |",
                "|---:|---:|---:|---:|"]
        out += [f"| {n} | {fmt_rate(r.get('msgs_per_s'))} | {r.get('lost', '–')} | "
                f"{r.get('worker_peak_rss_mib', '–')} MiB |" for n, r in scaling]
        out.append("")

    rates = sorted({int(k.split("/")[2]) for k in results if k.startswith("latency/")})
    for rate in rates:
        out += [f"## Receive latency at {rate:,} msgs/s (µs, frame send timestamp → receive time)", "",
                "| client | p50 | p90 | p99 | p99.9 | max |", "|---|---:|---:|---:|---:|---:|"]
        for peer in ("ceiling", "seed", "recorder"):
            out.append(latency_row(peer, results.get(f"latency/{peer}/{rate}")))
        losses = []
        for peer in ("ceiling", "seed", "recorder"):
            info = results.get(f"latency/{peer}/{rate}", {})
            if "feeder_sent" in info:
                losses.append(f"{peer} got {info.get('received'):,} of {info['feeder_sent']:,} sent "
                              f"(sim dropped {info.get('feeder_dropped')})")
        if losses:
            out += ["", "Loss against ime-sim's own counters: " + "; ".join(losses) + "."]
        rounds = {p: results.get(f"latency/{p}/{rate}", {}).get("p99_rounds_us")
                  for p in ("ceiling", "seed", "recorder")}
        if any(rounds.values()):
            out += ["", "Each row is the median-p99 round of several; the p99 of every round: "
                    + "; ".join(f"{p} {', '.join(f'{v:,.0f}' for v in r)}" for p, r in rounds.items() if r) + " µs."]
        paired = results.get(f"latency/recorder/{rate}", {}).get("p99_vs_ceiling_rounds")
        if paired:
            out += ["", "The peers run back to back in each round; the recorder's p99 ÷ the ceiling's, round by round: "
                    + ", ".join(f"{v:.2f}" for v in paired) + " (the gate takes their median)."]
        out.append("")

    ratios = results.get("ratios")
    if ratios:
        out += ["## CI gate (ratios measured in this run)", "", "| ratio | value | floor |", "|---|---:|---:|"]
        for name, value in ratios["ratios"].items():
            floor = ratios["floors"][name]
            sign = "≤" if name.endswith("_max") else "≥"
            out.append(f"| {name} | {value:.3f} | {sign} {floor} |")
        out.append("")

    seg_w = results.get("test_write_append_and_compress")
    seg_r = results.get("test_read_records")
    if seg_w or seg_r:
        out += ["## Segment store (200k simulator records)", "", "| operation | records/s | notes |",
                "|---|---:|---|"]
        if seg_w:
            out.append(f"| append + compress + write + seal | {fmt_rate(seg_w.get('records_per_s'))} | "
                       f"append alone {fmt_rate(seg_w.get('append_only_records_per_s'))}/s; compression "
                       f"{seg_w.get('compression_ratio')}× |")
        gz = results.get("test_write_baseline_gzip_lines")
        if gz:
            out.append(f"| baseline: gzip lines (seed style) | {fmt_rate(gz.get('records_per_s'))} | "
                       f"compression {gz.get('compression_ratio')}× |")
        if seg_r:
            out.append(f"| read, verified, with timestamps | {fmt_rate(seg_r.get('records_per_s'))} | |")
        zr = results.get("test_read_baseline_zstd_lines")
        if zr:
            out.append(f"| baseline: plain zstd + split | {fmt_rate(zr.get('records_per_s'))} | no checks, "
                       f"no timestamps; segment reader at {zr.get('segment_reader_ratio')}× of it |")
        out.append("")

    rr, rj = results.get("replay/raw"), results.get("replay/jsonl")
    if rr or rj:
        out += ["## Replay", "", "| run | figure |", "|---|---|"]
        if rr:
            out.append(f"| `ime-replay --speed max --format raw > /dev/null` | {fmt_rate(rr['records_per_s'])} "
                       "records/s |")
        if rj:
            out.append(f"| `ime-replay --speed max --format jsonl > /dev/null` | {fmt_rate(rj['records_per_s'])} "
                       "records/s |")
        base = results.get("replay/baseline_plain_zstd")
        if base:
            out.append(f"| baseline: plain zstd, split, write | {fmt_rate(base['records_per_s'])} records/s |")
        paced = results.get("replay/pacing_1x_20k")
        if paced:
            lat = paced["lateness_us"]
            out.append(f"| pacing at 1x, 20k msgs/s: lateness | p50 {lat['p50']} µs, p99 {lat['p99']} µs, "
                       f"max {lat['max']} µs; effective speed {paced['effective_speed']}× |")
        naive = results.get("replay/pacing_baseline_naive")
        if naive:
            lat = naive["lateness_us"]
            out.append(f"| baseline: naive sleep-the-gap pacer | p99 {lat['p99']:,.0f} µs; effective speed "
                       f"{naive['effective_speed']}× |")
        out.append("")

    sim = results.get("test_sim_push")
    if sim:
        out += ["## ime-sim push rate (one process → one counting client)", "",
                f"ime-sim: {fmt_rate(sim.get('sim_msgs_per_s'))} msgs/s ({sim.get('sim_mb_per_s')} MB/s); "
                f"naive one-send-per-message server: {fmt_rate(sim.get('naive_msgs_per_s'))} msgs/s; "
                f"ratio {sim.get('ratio_sim_to_naive')}×.", ""]
    return "\n".join(out)


def plots(results: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rate = 20_000
    curves = {p: results.get(f"latency/{p}/{rate}", {}).get("latency_cdf_us") for p in ("ceiling", "seed", "recorder")}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for peer, points in curves.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.step(xs, ys, where="post", label=peer)
        ax.set_xscale("log")
        ax.set_xlabel("receive latency (µs, log scale)")
        ax.set_ylabel("fraction of messages")
        ax.set_title(f"Receive latency CDF at {rate:,} msgs/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out / "latency_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    bars = [("ceiling", results.get("throughput/ceiling", {}).get("msgs_per_s")),
            ("seed", results.get("throughput/seed", {}).get("msgs_per_s")),
            ("recorder x1", results.get("throughput/recorder", {}).get("msgs_per_s")),
            ("recorder x2", results.get("throughput/recorder x2", {}).get("msgs_per_s")),
            ("recorder x4", results.get("throughput/recorder x4", {}).get("msgs_per_s"))]
    bars = [(n, v) for n, v in bars if v]
    if bars:
        fig, ax = plt.subplots(figsize=(7, 4))
        names, values = zip(*bars, strict=True)
        ax.bar(names, [v / 1000 for v in values], color=["#888", "#c55", "#38c", "#38c", "#38c"][: len(bars)])
        for i, v in enumerate(values):
            ax.text(i, v / 1000, f"{v / 1000:,.0f}k", ha="center", va="bottom")
        ax.set_ylabel("thousand msgs/s (zero loss)")
        ax.set_title("Throughput per client and recorder shard count")
        path = out / "throughput_shards.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    args = parser.parse_args(argv)
    missing = [p for p in args.json if not p.exists()]
    if missing:
        print(f"bench_report: error: {missing[0]}: no such file", file=sys.stderr)
        return 2
    results, machine = load(args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "REPORT.md"
    report.write_text(markdown(results, machine) + "\n")
    written = [report, *plots(results, args.out)]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
