"""Recordings for the export tests: simulator frames (both endpoints) written with a real SegmentWriter."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import orjson

from recorder.events import encode_event
from recorder.feed.message import parse_timestamp_ns
from recorder.segment.writer import SegmentWriter
from recorder.sim.market import Market, make_contracts, message_prefix

NS = 1_000_000_000
# 2026-05-29 20:29:50 UTC = 23:59:50 in Tehran: a 20 s recording crosses a Tehran trading date.
START_NS = 1_780_086_590 * NS
EXE = str(Path(sys.executable).parent / "ime-segments")


def stamp(ts_ns: int) -> bytes:
    """An ISO timestamp with all nine fractional digits, so that losing one would show."""
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns // NS)).encode()
    return head + b".%09dZ" % (ts_ns % NS)


def sim_frames(count: int, field: str = "contractId", contracts: int = 5, seed: int = 3,
               start_ns: int = START_NS, step_ns: int = 50_000_000) -> list[tuple[int, bytes]]:
    """(receive ns, payload) of `count` simulator messages; the server time is 1.234567 ms before receipt."""
    specs = make_contracts(contracts, seed)
    market = Market(specs, seed=seed, start_ns=start_ns)
    prefixes = [message_prefix(field, s.id if field == "contractId" else s.name) for s in specs]
    out = []
    for n in range(count):
        recv = start_ns + n * step_ns + 987
        i, tail = market.step()
        out.append((recv, prefixes[i] + stamp(recv - 1_234_567) + tail))
    return out


EDGE_TEXT = [
    b'{"bad json',
    b"[1, 2, 3]",
    b'{"channel":"IME Stream","contractId":"9001","timestamp":"not a time","data":{}}',
    b'{"channel":"IME Stream","contractName":"\xd8\xb3\xda\xa9\xd9\x87 1404","timestamp":"2026-05-29T20:29:00.5Z",'
    b'"data":{"ContractInfo":{"open_interest":12,"open_interest_changes":null},"Foo":{"a":1}},"v":2}',
    b'{"channel":"IME Stream","contractId":"9002","timestamp":"2026-05-29T20:29:01+03:30",'
    b'"data":{"AllowedPriceRange":{"minAllowedPrice":1.5,"maxAllowedPrice":123456789012345678901234567890}}}',
    b'{"channel":"IME Stream","contractId":"9003","timestamp":"2026-05-29T20:29:02Z","data":{"Heartbeat":1}}',
    b'{"channel":"IME Stream","contractId":"9004","timestamp":"2026-05-29T20:29:03.1Z",'
    b'"data":{"BestLimit":{"1":{"buy_price":"high"}}}}',
]


def write_recording(directory: Path, per_shard: int = 400, edge: bool = True) -> list[Path]:
    """Two shards (shard 0 on the id endpoint, shard 1 on the name endpoint), several files per shard,
    connection events, binary frames, a redundant-copy receipt (kind 4), malformed/odd frames and, as a
    `--redundancy 2` recorder writes them, later copies of most messages in the blocks' receipt columns (their
    originals in the same block or, across a frame cut, an earlier one)."""
    paths: list[Path] = []
    for shard, field in ((0, "contractId"), (1, "contractName")):
        frames = sim_frames(per_shard, field, seed=3 + shard)
        half = len(frames) // 2
        for part in (frames[:half], frames[half:]):
            writer = SegmentWriter(directory, shard=shard, meta={"contracts": []}, frame_bytes=16_384)
            writer.append(part[0][0] - 1000, 7, 3, encode_event("opened", url="ws://127.0.0.1/x"))
            copies: list[tuple[int, tuple[int, int]]] = []
            for k, (ts, payload) in enumerate(part):
                if edge and copies and copies[0][0] < ts:
                    orig_ts, at = copies.pop(0)
                    writer.append_receipt(orig_ts + 700, 9, orig_ts, 7, at)
                if edge and k % 4:
                    copies.append((ts, writer.position()))
                writer.append(ts, 7, 1, payload)
                if edge and k == 10:
                    writer.append(ts, 8, 4, struct.pack("<IQ", 7, 1500))  # receipt: never exported
                    writer.append(ts + 1, 7, 2, b"\x00\xffbinary")
                    for j, odd in enumerate(EDGE_TEXT):
                        writer.append(ts + 2 + j, 7, 1, odd)
            writer.append(part[-1][0] + 1000, 7, 3, encode_event("closed", code=1006, reason="gone"))
            paths.extend(s.path for s in writer.close())
    return paths


def raw_records(directory: Path) -> list[tuple[str, int, int, int, int, bytes]]:
    """(segment name, record number, shard, ts_ns, kind, payload) of every record as stored (a block's receipt
    columns as one record), from the segment reader."""
    from recorder.segment.reader import discover, open_segment

    out = []
    for path in discover([directory]):
        seg = open_segment(path)
        for i, rec in enumerate(seg.iter_records(expand=False)):
            out.append((path.name, i, rec.shard, rec.ts_ns, rec.kind, rec.payload))
    return out


def export(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, "export", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def server_ns(payload: bytes) -> int:
    return parse_timestamp_ns(orjson.loads(payload)["timestamp"])
