"""`--on-sealed CMD`: run the operator's command for each sealed segment, beside recording, never in its way.

The command (split like a shell would, but run without one) gets the segment's path as its last argument.
At most `jobs` run at once; a failure (non-zero exit, signal, or no exit within `timeout_s`) is retried with
growing delays, and reported each time. A file is "pending" from discovery until its command succeeded or
gave up; retention never removes a pending file, nor one whose command gave up.

Which files were handled survives restarts in `OUT/.on-sealed.done` (one relative path per line), so a
restarted recorder runs the command for files sealed while it was down, and not again for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from recorder.errors import UserError
from recorder.model.settings import DEFAULTS

log = logging.getLogger("recorder.hooks")

DONE_FILE = ".on-sealed.done"


def parse_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UserError(f"--on-sealed '{command}': {exc}") from None
    if not argv:
        raise UserError("--on-sealed is empty; give a command, e.g. --on-sealed 'rclone copyto --immutable'")
    if shutil.which(argv[0]) is None:
        # Found out at start, not after the first sealed file: retrying a missing program only delays stops.
        raise UserError(f"--on-sealed: {argv[0]} is not an executable program (not found on PATH or not "
                        "executable)")
    return argv


# The recorder's own secrets and systemd's sockets are not the hook's business.
# Every secret the recorder reads from its environment, and systemd's own variables: the hook is the
# operator's program, which has no business with the feed's or the relay's credentials.
WITHHELD_ENV = frozenset({"IME_PASSWORD", "IME_TOKEN", "IME_USERNAME", "IME_RELAY_TOKEN", "IME_NATS_URL",
                          "IME_REPLAY_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


def hook_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in WITHHELD_ENV}


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Delay before attempt `attempt + 1` (attempt ≥ 1): base, 2×base, 4×base … up to cap."""
    return min(cap_s, base_s * 2 ** (attempt - 1))


@dataclass(slots=True)
class HookRunner:
    command: str
    out_dir: Path
    jobs: int = DEFAULTS.ops.on_sealed_jobs
    attempts: int = 6
    backoff_base_s: float = DEFAULTS.ops.hook_backoff_s
    backoff_cap_s: float = 300.0
    timeout_s: float = 3600.0
    argv: list[str] = field(default_factory=list)
    pending: set[Path] = field(default_factory=set)
    given_up: set[Path] = field(default_factory=set)
    done: set[str] = field(default_factory=set)  # relative paths whose command succeeded
    succeeded_total: int = 0
    failures_total: int = 0
    given_up_total: int = 0
    _sem: asyncio.Semaphore | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.argv = parse_command(self.command)
        self.done = self._load_done()

    @property
    def protected(self) -> set[Path]:
        return self.pending | self.given_up

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.out_dir))
        except ValueError:
            return str(path)

    def _load_done(self) -> set[str]:
        try:
            return {line for line in (self.out_dir / DONE_FILE).read_text("utf-8").splitlines() if line}
        except (FileNotFoundError, UnicodeDecodeError):
            return set()

    def _record_done(self, rel: str) -> None:
        self.done.add(rel)
        with contextlib.suppress(OSError), open(self.out_dir / DONE_FILE, "a", encoding="utf-8") as fh:
            fh.write(rel + "\n")

    def forget(self, paths: set[Path]) -> None:
        """Files that are gone (retention): drop them from the done list so it does not grow for ever."""
        rels = {self._rel(p) for p in paths}
        if not rels & self.done:
            return
        self.done -= rels
        tmp = self.out_dir / (DONE_FILE + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text("".join(f"{r}\n" for r in sorted(self.done)), "utf-8")
            os.replace(tmp, self.out_dir / DONE_FILE)

    def is_known(self, path: Path) -> bool:
        return path in self.pending or path in self.given_up or self._rel(path) in self.done

    def submit(self, path: Path) -> bool:
        """Start handling a sealed file (once); returns False when it was already known."""
        if self.is_known(path):
            return False
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.jobs)
        self.pending.add(path)
        task = asyncio.get_running_loop().create_task(self._handle(path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _handle(self, path: Path) -> None:
        assert self._sem is not None
        try:
            for attempt in range(1, self.attempts + 1):
                async with self._sem:
                    why = await self._run_once(path)
                if why is None:
                    self.succeeded_total += 1
                    self._record_done(self._rel(path))
                    log.debug("--on-sealed succeeded for %s", path)
                    return
                self.failures_total += 1
                if attempt == self.attempts:
                    self.given_up.add(path)
                    self.given_up_total += 1
                    log.error("--on-sealed failed for %s (%s) %d times; giving up, the file is kept and will "
                              "not be removed by retention", path, why, attempt)
                    return
                delay = retry_delay(attempt, self.backoff_base_s, self.backoff_cap_s)
                log.warning("--on-sealed failed for %s (%s); retry %d of %d in %.0fs", path, why, attempt,
                            self.attempts - 1, delay)
                await asyncio.sleep(delay)
        finally:
            self.pending.discard(path)

    async def _run_once(self, path: Path) -> str | None:
        """None on success, else why it failed."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, str(path), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, env=hook_environment(os.environ))
        except OSError as exc:
            return f"cannot run {self.argv[0]}: {exc.strerror or exc}"
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # no orphan keeps copying after the recorder is gone
            raise
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return f"no exit within {self.timeout_s:g}s, killed"
        if proc.returncode == 0:
            return None
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return how + (f": {tail[0][:200]}" if tail else "")

    async def close(self, grace_s: float = 10.0) -> None:
        """Let running commands finish for a moment at shutdown; the rest run again at the next start."""
        if not self._tasks:
            return
        _, still = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for t in still:
            t.cancel()
        if still:
            log.warning("%d --on-sealed command(s) unfinished at shutdown; they run again at the next start",
                        len(still))
