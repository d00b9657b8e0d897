"""Assigning contracts to shards: rendezvous hashing, so the assignment of a contract depends on it alone.

Adding or removing a contract never moves another one, and changing the shard count moves only the
contracts whose best shard changed (about 1/N of them), so files of one contract stay on one shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _weight(contract: str, shard: int) -> bytes:
    return hashlib.blake2b(f"{shard}\x00{contract}".encode(), digest_size=8).digest()


def shard_of(contract: str, shards: int) -> int:
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return max(range(shards), key=lambda s: _weight(contract, s))


def partition(contracts: Sequence[str], shards: int) -> list[tuple[str, ...]]:
    """Contracts per shard, each keeping the input order."""
    groups: list[list[str]] = [[] for _ in range(shards)]
    for c in contracts:
        groups[shard_of(c, shards)].append(c)
    return [tuple(g) for g in groups]
