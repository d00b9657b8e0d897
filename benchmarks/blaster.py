"""The throughput feeder: a pre-framed WebSocket blaster, so throughput ratios measure the client, not the feeder.

`ime-sim --rate 0` renders every message in Python (~600k msgs/s on the benchmark machine), about what a bare
picows client reads, so "the recorder keeps up with the ceiling" only meant "keeps up with one Python
simulator". The blaster renders a buffer of IME-shaped frames once (the simulator's market, benchmarks/
workload.py) and then only hands that buffer to the kernel in a loop, one thread per connection (`send` releases
the GIL for the copy), so the kernel's loopback copy is its only cost.

    python benchmarks/blaster.py READY_FILE STATS_FILE

Serves any path (contracts and token are ignored), answers the upgrade, writes {"base_url", "port", "pid"} to
READY_FILE, then streams. When a client sends CLOSE the blaster finishes the frame in flight, answers CLOSE
and appends one JSON line {"conn", "sent", "bytes", "closed_by"} to STATS_FILE; `sent` counts whole frames
handed to the kernel, so a client that completes the close handshake must have received exactly `sent`
messages. A client that hangs up (the ceiling) gets `closed_by: "peer"`. Stops on SIGTERM.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from workload import sim_records

BUFFER_MESSAGES = 20_000  # ~15 MB of frames: larger than zstd's level-3 window, so repeats do not flatter it
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHUNK = 1 << 20
CLOSE_FRAME = b"\x88\x02\x03\xe8"  # CLOSE 1000, unmasked (server to client)


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


def build_buffer() -> tuple[bytes, list[int]]:
    """One buffer of ready frames and the offset where each frame ends (for counting whole frames sent)."""
    frames = [frame(payload) for _, payload in sim_records(BUFFER_MESSAGES, contracts=50)]
    ends = []
    at = 0
    for f in frames:
        at += len(f)
        ends.append(at)
    return b"".join(frames), ends


def read_upgrade(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def watch_for_close(conn: socket.socket, closing: threading.Event) -> None:
    """Read what the client sends (masked frames); a CLOSE (or the socket ending) stops the stream."""
    data = b""
    try:
        while not closing.is_set():
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            while len(data) >= 2:
                opcode, n = data[0] & 0x0F, data[1] & 0x7F
                at = 2
                if n == 126:
                    n, at = struct.unpack_from("!H", data, 2)[0], 4
                elif n == 127:
                    n, at = struct.unpack_from("!Q", data, 2)[0], 10
                at += 4 if data[1] & 0x80 else 0
                if len(data) < at + n:
                    break
                data = data[at + n:]
                if opcode == 0x8:
                    return
    except OSError:
        pass
    finally:
        closing.set()


def serve(conn: socket.socket, number: int, buffer: bytes, ends: list[int], stats: Path) -> None:
    closing = threading.Event()
    sent_bytes = 0
    closed_by = "peer"
    try:
        conn.sendall(read_upgrade(conn))
        threading.Thread(target=watch_for_close, args=(conn, closing), daemon=True).start()
        view = memoryview(buffer)
        size = len(buffer)
        pos = 0
        while not closing.is_set():
            # Chunks, not the whole buffer: a blocking send returns only when all of it is queued, and a CLOSE
            # from the client must be answered promptly.
            n = conn.send(view[pos:pos + CHUNK])
            pos += n
            sent_bytes += n
            if pos == size:
                pos = 0
        # Finish the frame in flight, so the CLOSE that follows starts on a frame boundary.
        end = ends[bisect.bisect_left(ends, pos)] if pos else 0
        if end != pos:
            conn.sendall(view[pos:end])
            sent_bytes += end - pos
        conn.sendall(CLOSE_FRAME)
        closed_by = "client close"
    except OSError:
        pass
    finally:
        whole, rest = divmod(sent_bytes, size)
        sent = whole * len(ends) + bisect.bisect_right(ends, rest)
        with open(stats, "a") as f:
            f.write(json.dumps({"conn": number, "sent": sent, "bytes": sent_bytes, "closed_by": closed_by}) + "\n")
        conn.close()


def main(ready: Path, stats: Path) -> None:
    buffer, ends = build_buffer()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base_url": f"ws://127.0.0.1:{port}/data-engine/ime/live/data/websocket",
                               "port": port, "pid": os.getpid(), "buffer_messages": len(ends),
                               "buffer_bytes": len(buffer)}))
    os.replace(tmp, ready)
    number = 0
    while True:
        conn, _ = listener.accept()
        number += 1
        threading.Thread(target=serve, args=(conn, number, buffer, ends, stats), daemon=True).start()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
