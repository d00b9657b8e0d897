"""Simulator-shaped payloads for unit tests (the market of recorder.sim, both identifier fields)."""

from __future__ import annotations

from recorder.sim.market import Market, make_contracts, message_prefix


def sim_payloads(field: str, count: int = 2000, contracts: int = 12) -> list[bytes]:
    specs = make_contracts(contracts, 5)
    market = Market(specs, seed=5, start_ns=1_764_000_000 * 10**9)
    prefixes = [message_prefix(field, s.id if field == "contractId" else s.name) for s in specs]
    out = []
    for _ in range(count):
        i, tail = market.step()
        out.append(prefixes[i] + b"2026-11-24T09:00:00.000000Z" + tail)
    return out
