"""Helpers for the live fan-out tests: the relay's address from the recorder's log, what was recorded per contract."""

from __future__ import annotations

import re
import socket
from collections import defaultdict
from pathlib import Path

from record_util import RecorderProcess

from recorder.feed.message import identifier_of
from recorder.model.record import RecordKind
from recorder.segment.reader import discover, open_segment


def relay_base(rec: RecorderProcess, timeout: float = 30.0) -> str:
    rec.wait_for("live relay serving ws://", timeout)
    m = re.search(r"live relay serving (ws://\S+)", rec.stderr)
    assert m, rec.stderr
    return m.group(1)


def metrics_url(rec: RecorderProcess) -> str:
    rec.wait_for("Prometheus metrics on http://")
    m = re.search(r"Prometheus metrics on (http://\S+)", rec.stderr)
    assert m
    return m.group(1)


def recorded_by_contract(out_dir: Path) -> dict[str, list[bytes]]:
    """Text payloads per contract, in arrival order (a contract lives on one connection of one shard)."""
    found: dict[str, list[bytes]] = defaultdict(list)
    for path in discover([out_dir]):
        for rec in open_segment(path).iter_records():
            if rec.kind == RecordKind.TEXT:
                contract = identifier_of(rec.payload)
                assert contract is not None
                found[contract].append(rec.payload)
    return found


def recorded_payloads(out_dir: Path) -> list[bytes]:
    return [p for msgs in recorded_by_contract(out_dir).values() for p in msgs]


def assert_suffix_per_contract(got: list[bytes], recorded: dict[str, list[bytes]], contracts: tuple[str, ...]) -> int:
    """Per contract, `got` is exactly the recording from the client's first message to the end, in order."""
    per: dict[str, list[bytes]] = defaultdict(list)
    for p in got:
        c = identifier_of(p)
        assert c in contracts, f"received {c!r}, not subscribed"
        per[c].append(p)
    for c in contracts:
        expected = recorded[c]
        mine = per.get(c, [])
        assert mine, f"nothing received for {c}"
        start = expected.index(mine[0])
        assert mine == expected[start:], (f"contract {c}: received {len(mine)} messages, recorded "
                                          f"{len(expected) - start} from the first one received")
    return len(got)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
