"""Peer (b), the seed-style recorder: the API document's Python example extended the way a user would —
`websockets` + `json.loads` (for the identifier, as in the example) + one line per message into a gzip file:
receive time, contract, and the message text as received (not re-serialised, to be fair to it).

    python benchmarks/peers/seed_recorder.py URL TOKEN SECONDS OUT.jsonl.gz
prints one JSON object: messages, seconds, and (receive ns, frame timestamp) samples for latency.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time

import websockets


async def subscribe(url: str, token: str, seconds: float, out: str) -> dict[str, object]:
    headers = {"Authorization": token}
    messages = 0
    first = last = 0
    samples: list[tuple[int, str]] = []
    deadline = time.monotonic() + seconds
    with gzip.open(out, "wt", encoding="utf-8") as f:
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            while time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
                received = time.time_ns()
                payload = json.loads(message)
                identifier = payload.get("contractId") or payload.get("contractName")
                f.write(f"{received}\t{identifier}\t{message}\n")
                if not messages:
                    first = received
                last = received
                messages += 1
                samples.append((received, payload["timestamp"]))
    return {"messages": messages, "seconds": (last - first) / 1e9, "samples": samples}


if __name__ == "__main__":
    result = asyncio.run(subscribe(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]))
    sys.stdout.write(json.dumps(result) + "\n")
