"""Helpers for tests against the simulator: a recording picows client, the API document's websockets
client, a child-process simulator, and running coroutines on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop
import websockets
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from recorder.sim import SimConfig, SimHandle, start_sim

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run `coro` on a fresh uvloop loop, failing the test if it takes longer than `timeout`."""
    return uvloop.run(asyncio.wait_for(coro, timeout))


@contextlib.asynccontextmanager
async def running_sim(**kwargs: Any) -> AsyncIterator[SimHandle]:
    sim = await start_sim(SimConfig(**kwargs))
    try:
        yield sim
    finally:
        await sim.close()


@dataclass
class Frame:
    msg_type: WSMsgType
    fin: bool
    payload: bytes
    at: float  # perf_counter when received


@dataclass
class Session:
    frames: list[Frame] = field(default_factory=list)
    close_code: int | None = None  # from the server's CLOSE frame; None if none came
    close_reason: str = ""
    disconnected_at: float | None = None

    def data(self, msg_type: WSMsgType = WSMsgType.TEXT) -> list[Frame]:
        return [f for f in self.frames if f.msg_type == msg_type]

    def texts(self) -> list[bytes]:
        return [f.payload for f in self.frames if f.msg_type == WSMsgType.TEXT and f.fin]


class Recorder(WSListener):  # type: ignore[misc]
    """Keeps every frame; stops when `done(session)` says so, or the server closes or drops."""

    def __init__(self, session: Session, done: Callable[[Session], bool], finished: asyncio.Future[None],
                 keep_text: bool = True) -> None:
        super().__init__()
        self.session = session
        self.done = done
        self.finished = finished
        self.keep_text = keep_text

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        s = self.session
        if frame.msg_type == WSMsgType.CLOSE:
            s.close_code = int(frame.get_close_code())
            s.close_reason = frame.get_close_reason()
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        if frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        keep = self.keep_text or frame.msg_type != WSMsgType.TEXT
        s.frames.append(Frame(frame.msg_type, frame.fin, frame.get_payload_as_bytes() if keep else b"",
                              time.perf_counter()))
        if self.done(s) and not self.finished.done():
            self.finished.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.session.disconnected_at = time.perf_counter()
        if not self.finished.done():
            self.finished.set_result(None)


async def picows_session(url: str, token: str | None, done: Callable[[Session], bool] = lambda s: False,
                         timeout: float = 10.0, max_frame_size: int = 64 << 20, keep_text: bool = True) -> Session:
    """Connect with picows, record frames until `done`, a close/drop, or `timeout`; then hang up.

    PINGs are recorded and answered by hand (picows's auto-pong would hide them).
    """
    session = Session()
    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    headers = {"Authorization": token} if token is not None else None
    # picows gives up on an upgrade after 5 s: a server under test (the relay's hub yields the CPU to the
    # workers) may take longer on a loaded machine, and a refusal is what some tests wait for.
    transport, _ = await ws_connect(lambda: Recorder(session, done, finished, keep_text), url,
                                    extra_headers=headers, max_frame_size=max_frame_size, enable_auto_pong=False,
                                    websocket_handshake_timeout=30)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(finished), timeout)
    if not transport.is_disconnected:
        transport.send_close(WSCloseCode.OK)
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 5)
    return session


async def doc_client(url: str, token: str, limit: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The API document's Python example, verbatim in substance, stopping after `limit` messages."""
    headers = {
        "Authorization": token
    }
    seen = []
    async with websockets.connect(
        url,
        additional_headers=headers
    ) as ws:
        async for message in ws:
            payload = json.loads(message)
            identifier = (
                payload.get("contractId")
                or payload.get("contractName")
            )
            seen.append((payload["timestamp"], identifier, payload["channel"], payload))
            if len(seen) >= limit:
                break
    return seen


class SimProcess:
    """`python -m recorder.cli.sim ... --ready-file` as a child process; always stopped on exit."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.ready_file = workdir / f"sim-ready-{os.getpid()}-{time.monotonic_ns()}.json"
        self.stdout_path = self.ready_file.with_suffix(".out")
        self.stderr_path = self.ready_file.with_suffix(".err")
        self.args = ["--port", "0", "--http-port", "0", "--ready-file", str(self.ready_file), *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 15.0) -> SimProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "recorder.cli.sim", *self.args], stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ime-sim exited {self.proc.returncode}: {self.stderr_path.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ime-sim not ready after {timeout}s: {self.stderr_path.read_text()}")
            time.sleep(0.02)
        self.info = json.loads(self.ready_file.read_text())
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# The API document's JavaScript client runs under node with the `ws` package (installed by `make test`).
NODE = shutil.which("node")


def node_has_ws() -> bool:
    if NODE is None:
        return False
    return subprocess.run([NODE, "-e", "require('ws')"], capture_output=True).returncode == 0
