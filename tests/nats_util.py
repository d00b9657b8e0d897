"""Real nats-server processes for the NATS tests: one JetStream server, or a 3-node JetStream cluster, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from live_util import free_port

NATS_SERVER = shutil.which("nats-server")
needs_nats_server = pytest.mark.skipif(
    NATS_SERVER is None, reason="nats-server is not installed (apt-get install nats-server; `make test` and .ci/run "
                                "install it when they can)")


class NatsServer:
    """`nats-server -js` on 127.0.0.1 with its own store dir; restartable on the same port and store.

    `jetstream=False`: a plain NATS server, as one started without -js."""

    def __init__(self, workdir: Path, name: str = "n1", cluster: list[int] | None = None, cluster_port: int = 0,
                 port: int | None = None, jetstream: bool = True) -> None:
        self.name = name
        self.port = port or free_port()
        self.store = workdir / f"nats-{name}"
        self.store.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"nats-{name}.log"
        self.conf = workdir / f"nats-{name}.conf"
        lines = [f"server_name: {name}", f"listen: 127.0.0.1:{self.port}"]
        if jetstream:
            lines.append(f'jetstream {{ store_dir: "{self.store}" }}')
        if cluster is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cluster if p != cluster_port)
            lines.append(f"cluster {{ name: ime; listen: 127.0.0.1:{cluster_port}; routes: [{routes}] }}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        assert NATS_SERVER is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.conf)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def cluster(workdir: Path, n: int = 3) -> list[NatsServer]:
    ports = [free_port() for _ in range(n)]
    return [NatsServer(workdir, f"n{i + 1}", cluster=ports, cluster_port=ports[i]) for i in range(n)]


async def wait_jetstream(url: str, timeout: float = 30.0) -> None:
    """Until JetStream answers (a cluster needs a meta leader first)."""
    import nats

    deadline = time.monotonic() + timeout
    while True:
        try:
            nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def stream_messages(url: str, stream: str = "IME") -> list[tuple[str, bytes, dict[str, Any]]]:
    """Every message in the stream, in stream order: (subject, payload, headers)."""
    import nats
    from nats.js.errors import ServiceUnavailableError

    async def patient(call: Any, timeout: float = 30.0) -> Any:
        # Right after a node is killed the cluster elects new leaders and answers 503 for a while: the test
        # reads what the stream holds once it answers again.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await call()
            except ServiceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await patient(lambda: js.stream_info(stream))
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await patient(lambda seq=seq: js.get_msg(stream, seq))
            out.append((msg.subject, msg.data or b"", dict(msg.headers or {})))
        return out
    finally:
        await nc.close()


async def stream_info(url: str, stream: str = "IME") -> Any:
    import nats

    nc = await nats.connect(url)
    try:
        return await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
