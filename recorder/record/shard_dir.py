"""A shard's hold on the output directory: one writer per shard (a lock file), and its predecessor's `.open` files."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from recorder.segment.files import SegmentWriteError, describe_os_error
from recorder.segment.naming import open_segments, shard_lock_path


class ShardLocked(Exception):
    pass


def lock_shard(out_dir: Path, prefix: str, shard: int) -> int:
    """Take the shard's lock for the life of the process (the fd is kept open); refuse a second recorder."""
    path = shard_lock_path(out_dir, prefix, shard)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:  # restarting cannot fix a directory that went away or turned read-only
        raise SegmentWriteError(describe_os_error(exc, out_dir)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShardLocked(f"another recorder is writing shard {shard} in {out_dir}; "
                          "use another --out or stop it first") from None
    return fd


def stale_open_files(out_dir: Path, prefix: str, shard: int) -> list[Path]:
    """`.open` files a crashed predecessor of this shard left (taken under the lock, so none is being written)."""
    return open_segments(out_dir, shard, prefix)
