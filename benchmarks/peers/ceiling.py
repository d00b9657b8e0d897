"""Peer (a), the ceiling: a bare picows client that only counts frames (and, for latency runs, keeps the
receive time and the frame's own send timestamp, nothing else).

    python benchmarks/peers/ceiling.py URL TOKEN SECONDS OUT [--latency]

prints one small JSON object (messages, seconds from first to last frame) and writes binary int64 pairs
(benchmarks/samples.py): OUT.timeline, (receive ns, messages so far) every 256 messages, for the common
throughput window; with --latency also OUT.samples, (receive ns, send ns) per message. Files, not the pipe:
160k samples as JSON on stdout were cut at 5.6 MB once.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from array import array
from pathlib import Path

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).parent.parent))
from samples import MARK_EVERY, write_samples, write_timeline

TS_KEY = b'"timestamp":"'


class Counter(WSListener):  # type: ignore[misc]
    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep
        self.messages = 0
        self.first = 0
        self.last = 0
        self.marks = array("q")
        self.received = array("q")
        self.stamps: list[bytes] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.time_ns()
        if frame.msg_type is not WSMsgType.TEXT:
            return
        if not self.messages:
            self.first = now
        self.last = now
        self.messages += 1
        if not self.messages % MARK_EVERY:
            self.marks.append(now)
        if self.keep:
            payload = frame.get_payload_as_bytes()
            at = payload.find(TS_KEY) + len(TS_KEY)
            self.received.append(now)
            self.stamps.append(payload[at:at + 27])


async def run(url: str, token: str, seconds: float, keep: bool) -> Counter:
    transport, client = await ws_connect(lambda: Counter(keep), url, extra_headers={"Authorization": token},
                                         max_frame_size=16 << 20)
    assert isinstance(client, Counter)
    await asyncio.sleep(seconds)
    transport.disconnect(graceful=False)
    return client


if __name__ == "__main__":
    keep = "--latency" in sys.argv
    out = Path(sys.argv[4])
    c = uvloop.run(run(sys.argv[1], sys.argv[2], float(sys.argv[3]), keep))
    # Everything below runs after the measurement.
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # measured before the files
    write_timeline(out, c.first, c.marks, c.last, c.messages)
    if keep:
        write_samples(out, c.received, c.stamps)
    sys.stdout.buffer.write(orjson.dumps({"messages": c.messages, "seconds": (c.last - c.first) / 1e9,
                                          "peak_rss_mib": round(peak_rss_mib, 1)}) + b"\n")
