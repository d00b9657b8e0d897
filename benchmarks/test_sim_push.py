"""How fast one ime-sim process pushes market messages to one fast client on loopback.

Three processes: the server (ime-sim --rate 0, or the naive baseline), and a bare picows client that only
counts frames (benchmarks/count_client.py). The baseline server renders the very same messages but calls
picows `transport.send()` once per message; ime-sim pre-frames and writes ~128 KiB per syscall. Both are
measured in the same run so their ratio means something on a noisy machine.

    .venv/bin/pytest benchmarks/test_sim_push.py
    IME_BENCH_MESSAGES=500000 .venv/bin/pytest benchmarks/test_sim_push.py   # quicker
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import stop_process

HERE = Path(__file__).parent
QUICK = os.environ.get("IME_BENCH_QUICK") == "1"
MESSAGES = int(os.environ.get("IME_BENCH_MESSAGES", "500000" if QUICK else "2000000"))
ROUNDS = 3
_measured: dict[str, dict[str, float]] = {}


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not become ready")
        time.sleep(0.02)
    return json.loads(path.read_text())


@contextlib.contextmanager
def server(args: list[str], ready: Path) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield wait_for(ready, proc)
    finally:
        stop_process(proc)


def sim_server(tmp_path: Path) -> contextlib.AbstractContextManager[dict[str, Any]]:
    ready = tmp_path / "sim-ready.json"
    return server([sys.executable, "-m", "recorder.cli.sim", "--rate", "0", "--contracts", "20", "--port", "0",
                   "--http-port", "0", "--ready-file", str(ready), "-q"], ready)


def naive_server(tmp_path: Path) -> contextlib.AbstractContextManager[dict[str, Any]]:
    ready = tmp_path / "naive-ready.json"
    return server([sys.executable, str(HERE / "naive_server.py"), str(ready)], ready)


def count(url: str, token: str, messages: int) -> dict[str, float]:
    """Run the counting client in its own process; msgs/s and MB/s from its first frame to its last."""
    out = subprocess.run([sys.executable, str(HERE / "count_client.py"), url, token, str(messages)],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    result = json.loads(out)
    assert result["messages"] == messages, result
    return {"msgs_per_s": messages / result["seconds"], "mb_per_s": result["bytes"] / result["seconds"] / 1e6,
            "avg_bytes": result["bytes"] / messages, "seconds": result["seconds"]}


def measure_naive(tmp_path: Path) -> dict[str, float]:
    with naive_server(tmp_path) as info:
        count(info["url"], "-", 50_000)  # warm-up
        return count(info["url"], "-", MESSAGES)


def report(benchmark: Any, name: str, result: dict[str, float]) -> None:
    benchmark.extra_info.update({f"{name}_msgs_per_s": round(result["msgs_per_s"]),
                                 f"{name}_mb_per_s": round(result["mb_per_s"], 1),
                                 "avg_message_bytes": round(result["avg_bytes"], 1), "messages": MESSAGES})


def test_naive_send_per_message_baseline(benchmark, tmp_path):
    results: list[dict[str, float]] = []
    with naive_server(tmp_path) as info:
        count(info["url"], "-", 50_000)
        benchmark.pedantic(lambda: results.append(count(info["url"], "-", MESSAGES)), rounds=1, iterations=1)
    _measured["naive"] = results[0]
    report(benchmark, "naive", results[0])
    print(f"\nnaive transport.send() per message: {results[0]['msgs_per_s']:,.0f} msgs/s, "
          f"{results[0]['mb_per_s']:.0f} MB/s")


def test_sim_push(benchmark, tmp_path):
    baseline = _measured.get("naive") or measure_naive(tmp_path)
    results: list[dict[str, float]] = []
    with sim_server(tmp_path) as info:
        url = info["base_url"] + "/contract/id?" + "&".join(f"contract_id={i}" for i in info["ids"])
        count(url, info["token"], 50_000)
        benchmark.pedantic(lambda: results.append(count(url, info["token"], MESSAGES)), rounds=ROUNDS,
                           iterations=1)
    best = max(results, key=lambda r: r["msgs_per_s"])
    report(benchmark, "sim", best)
    report(benchmark, "naive", baseline)
    ratio = best["msgs_per_s"] / baseline["msgs_per_s"]
    benchmark.extra_info["sim_msgs_per_s_all_rounds"] = [round(r["msgs_per_s"]) for r in results]
    benchmark.extra_info["ratio_sim_to_naive"] = round(ratio, 2)
    rounds = ", ".join(f"{r['msgs_per_s']:,.0f}" for r in results)
    print(f"\nime-sim: {best['msgs_per_s']:,.0f} msgs/s, {best['mb_per_s']:.0f} MB/s (rounds: {rounds}); "
          f"naive: {baseline['msgs_per_s']:,.0f} msgs/s; ratio {ratio:.2f}x")
    # Pre-framed batched writes must clearly beat one send() per message on the same machine and messages
    # (measured 3.9×). Quick mode on a loaded CI runner measured 2.3× at load average 5: its floor is 1.5×.
    assert ratio >= (1.5 if QUICK else 2.0)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
