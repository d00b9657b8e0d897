"""IME-shaped workloads for benchmarks: the simulator's market, rendered exactly as ime-sim sends it."""

from __future__ import annotations

import time
from functools import lru_cache

from recorder.sim.market import Market, make_contracts, message_prefix

NS = 1_000_000_000


def iso_micro(ts_ns: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns // NS)).encode()
    return stamp + b".%06dZ" % (ts_ns // 1000 % 1_000_000)


@lru_cache(maxsize=4)
def sim_records(count: int, contracts: int = 50, rate: float = 20_000.0,
                seed: int = 7) -> tuple[tuple[int, bytes], ...]:
    """(receive ts_ns, payload) pairs: `count` simulator messages at `rate` msgs/s across `contracts`."""
    specs = make_contracts(contracts, seed)
    market = Market(specs, seed=seed, start_ns=1_764_000_000 * NS)
    prefixes = [message_prefix("contractId", s.id) for s in specs]
    t0 = 1_764_000_000 * NS
    step = int(NS / rate)
    out = []
    for n in range(count):
        ts = t0 + n * step
        i, tail = market.step()
        out.append((ts + 150_000, prefixes[i] + iso_micro(ts) + tail))
    return tuple(out)
