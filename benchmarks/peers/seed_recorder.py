"""Peer (b), the seed-style recorder: what a user writes from the API document's Python example — its own
`async for message in ws` loop and `json.loads`, extended the obvious way to keep the data: one line per
message (receive time, contract, the message text as received) into a gzip file at gzip's default level 6,
the level the project's own baseline uses (benchmarks/test_segment_io.py).

    python benchmarks/peers/seed_recorder.py URL TOKEN SECONDS OUT

The loop runs until SECONDS have passed (one timeout around the whole subscription, as a user stopping it
would, not one per message). The close handshake after it waits at most 1 s rather than websockets' default
10 s: the blaster never answers a close while it floods, and the measurement is over by then. For the harness
it also keeps each receive time and the frame's `timestamp` (already parsed by json.loads): after the run they
go to OUT.timeline and OUT.samples (benchmarks/samples.py); the gzip file is OUT.jsonl.gz. Prints one small JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import websockets

sys.path.insert(0, str(Path(__file__).parent.parent))
from samples import timeline_of, write_samples

received: list[int] = []
stamps: list[str] = []


async def subscribe(url: str, token: str, out: TextIO) -> None:
    headers = {
        "Authorization": token
    }
    async with websockets.connect(
        url,
        additional_headers=headers,
        close_timeout=1,
    ) as ws:
        async for message in ws:
            now = time.time_ns()
            payload = json.loads(message)
            identifier = (
                payload.get("contractId")
                or payload.get("contractName")
            )
            out.write(f"{now}\t{identifier}\t{message}\n")
            received.append(now)
            stamps.append(payload["timestamp"])


async def main(url: str, token: str, seconds: float, out: Path) -> None:
    with gzip.open(f"{out}.jsonl.gz", "wt", encoding="utf-8", compresslevel=6) as f, \
            contextlib.suppress(TimeoutError):
        await asyncio.wait_for(subscribe(url, token, f), seconds)


if __name__ == "__main__":
    out = Path(sys.argv[4])
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), out))
    from array import array

    pairs = array("q")
    for t, n in timeline_of(received):
        pairs.extend((t, n))
    with open(f"{out}.timeline", "wb") as f:
        pairs.tofile(f)
    write_samples(out, received, stamps)
    seconds = (received[-1] - received[0]) / 1e9 if received else 0.0
    sys.stdout.write(json.dumps({"messages": len(received), "seconds": seconds}) + "\n")
