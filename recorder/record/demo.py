"""`ime-record --demo`: the built-in simulator as a child process on 127.0.0.1, with no credentials needed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from recorder.errors import RuntimeFailure
from recorder.model.settings import DEFAULTS

READY_TIMEOUT_S = 20.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the recorder dies, even by SIGKILL (no orphaned simulator)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class DemoSimulator:
    def __init__(self, contracts: int = DEFAULTS.demo.contracts, rate: float = DEFAULTS.demo.rate,
                 seed: int = 1404, extra_args: tuple[str, ...] = ()) -> None:
        self.contracts = contracts
        self.rate = rate
        self.seed = seed
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ime-demo-")
        ready = Path(self._dir.name) / "ready.json"
        args = [sys.executable, "-m", "recorder.cli.sim", "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
                "--contracts", str(self.contracts), "--rate", f"{self.rate:g}", "--seed", str(self.seed),
                "--ready-file", str(ready), "--quiet", *self.extra_args]
        # Its own session: a Ctrl-C meant for the recorder must not take the feed away mid-shutdown.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeFailure(f"the demo simulator exited at start (code {self.proc.returncode})")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeFailure("the demo simulator did not start within 20s")
            time.sleep(0.05)
        self.info = orjson.loads(ready.read_bytes())

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def base_url(self) -> str:
        return str(self.info["base_url"])

    @property
    def token_url(self) -> str:
        return str(self.info["token_url"])

    @property
    def username(self) -> str:
        return str(self.info["username"])

    @property
    def password(self) -> str:
        return str(self.info["password"])

    @property
    def ids(self) -> list[str]:
        return [str(c) for c in self.info["ids"]]

    @property
    def names(self) -> list[str]:
        return [str(c) for c in self.info["names"]]

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> DemoSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
