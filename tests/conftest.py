"""Shared fixtures. Everything binds 127.0.0.1 port 0 and lives in tmp_path, so xdist workers never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """`sim_process(*args)` starts `python -m recorder.cli.sim` with args; every one is killed at teardown."""
    from sim_util import SimProcess

    started: list[SimProcess] = []

    def start(*args: str) -> SimProcess:
        proc = SimProcess(tmp_path, *args)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Callable[..., object]]:
    """`recorder(*args, env=...)` starts `ime-record` as a process tree; every one is killed at teardown."""
    from record_util import RecorderProcess

    started: list[RecorderProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RecorderProcess:
        proc = RecorderProcess(tmp_path, *args, env=env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill_tree()
