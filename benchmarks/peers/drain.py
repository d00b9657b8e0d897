"""The feeder's own capacity: a raw-socket client that upgrades, then only drains bytes (no WebSocket parsing).

    python benchmarks/peers/drain.py URL SECONDS

prints {"bytes", "seconds"}: what the feeder pushes through loopback when the reader costs nothing. test_e2e
gates the blaster at well above the ceiling client, so throughput ratios are not bounded by the feeder.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from urllib.parse import urlsplit


def main(url: str, seconds: float) -> dict[str, float]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    buf = bytearray(1 << 20)
    total = len(head.split(b"\r\n\r\n", 1)[1])
    recv_into = sock.recv_into
    start = time.perf_counter()
    end = start + seconds
    while True:
        total += recv_into(buf)
        if time.perf_counter() >= end:
            break
    elapsed = time.perf_counter() - start
    sock.close()
    return {"bytes": total, "seconds": elapsed}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(sys.argv[1], float(sys.argv[2]))) + "\n")
