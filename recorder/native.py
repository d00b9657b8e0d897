"""The C kernels: which are built, and the one switch (IME_NATIVE) that turns them off.

Each kernel is a fast twin of a Python path with the same results (a differential test per kernel): setup.py
builds it at install when a compiler is there, and the project keeps one only where a same-run benchmark shows
at least 2x on a figure a user waits for (the benchmark named in each entry below).

IME_NATIVE unset or `1`: every built kernel is used. `0`: none, the Python paths everywhere (to compare, or to
rule the C code out). Otherwise the names of the kernels to turn off, comma-separated (`IME_NATIVE=dedupe`).
Read once, at import, by each kernel's user.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.util import find_spec
from types import ModuleType

ENV = "IME_NATIVE"
# name -> extension module (its Python twin; the benchmark showing it pays).
KERNELS: dict[str, str] = {
    "scan": "recorder.export._scan",  # export/pypaths.py; benchmarks/test_export.py
    "dedupe": "recorder.segment._dedupe",  # segment/dedupe.py's PyDeduper; benchmarks/test_merge.py
    "fanout": "recorder.live._fanout",  # live/fanout.py's PyFanout; benchmarks/test_live.py
}


def _turned_off(value: str) -> frozenset[str]:
    value = value.strip().lower()
    if value in ("", "1"):
        return frozenset()
    if value == "0":
        return frozenset(KERNELS)
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    if unknown := sorted(names - KERNELS.keys()):
        # A misspelt name must not pass silently as "everything native".
        print(f"{ENV}: unknown kernel {', '.join(unknown)} ignored (0, 1, or names among {', '.join(KERNELS)})",
              file=sys.stderr)
    return names & KERNELS.keys()


OFF = _turned_off(os.environ.get(ENV, ""))


def module(kernel: str) -> ModuleType | None:
    """The kernel's extension module when it is built (whatever IME_NATIVE says: the differential tests
    compare it with its twin); None when installed without a C compiler."""
    try:
        return importlib.import_module(KERNELS[kernel])
    except ImportError:
        return None


def built(kernel: str) -> bool:
    """Whether the kernel's extension module is there, without importing it."""
    return find_spec(KERNELS[kernel]) is not None


def on(kernel: str) -> bool:
    """Whether the kernel is used: built, and not turned off by IME_NATIVE."""
    return kernel not in OFF and built(kernel)


def why_python(kernel: str) -> str:
    """Why the Python path runs instead of the kernel, for a summary line."""
    if kernel in OFF:
        return f"{ENV}={os.environ.get(ENV, '')} is set"
    return f"the C kernel {KERNELS[kernel]} is not built: install with a C compiler for the faster path"


__all__ = ["ENV", "KERNELS", "OFF", "built", "module", "on", "why_python"]
