"""Peer (a), the ceiling: a bare picows client that only counts frames (and, for latency runs, keeps the
receive time and the frame's own send timestamp, nothing else).

    python benchmarks/peers/ceiling.py URL TOKEN SECONDS [--latency]
prints one JSON object: messages, seconds (first to last frame), and with --latency the raw samples file.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

TS_KEY = b'"timestamp":"'


class Counter(WSListener):  # type: ignore[misc]
    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep
        self.messages = 0
        self.first = 0
        self.last = 0
        self.samples: list[tuple[int, bytes]] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.time_ns()
        if frame.msg_type is not WSMsgType.TEXT:
            return
        if not self.messages:
            self.first = now
        self.last = now
        self.messages += 1
        if self.keep:
            payload = frame.get_payload_as_bytes()
            at = payload.find(TS_KEY) + len(TS_KEY)
            self.samples.append((now, payload[at:at + 27]))


async def run(url: str, token: str, seconds: float, keep: bool) -> dict[str, object]:
    transport, client = await ws_connect(lambda: Counter(keep), url, extra_headers={"Authorization": token},
                                         max_frame_size=16 << 20)
    assert isinstance(client, Counter)
    await asyncio.sleep(seconds)
    transport.disconnect(graceful=False)
    return {"messages": client.messages, "seconds": (client.last - client.first) / 1e9,
            "samples": [(ts, stamp.decode()) for ts, stamp in client.samples]}


if __name__ == "__main__":
    result = uvloop.run(run(sys.argv[1], sys.argv[2], float(sys.argv[3]), "--latency" in sys.argv))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
