"""The C kernels: which are built, and the one switch (IME_NATIVE) that turns them off.

Each kernel is a fast twin of a Python path with the same results (a differential test per kernel): setup.py
builds it at install when a compiler is there, and the project keeps one only where a same-run benchmark shows
at least 2x on a figure a user waits for (the benchmark named in each entry below). Measured and dropped:
_handover.c (the worker's live output), _fanout.c (the hub's data path: the relay's rate the same with it) and
_dedupe.c (the dedupe window: the merge 1.2-2x, median 1.65x, the recorder's two copies 1.3-1.4x, and every
change to the window's rules written twice).

IME_NATIVE unset or `1`: every built kernel is used. `0`: none, the Python paths everywhere (to compare, or to
rule the C code out). Otherwise the names of the kernels to turn off, comma-separated (`IME_NATIVE=scan`).
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
    # The export's parser, twin of export/pypaths.py: 2.2-7.6x the export's rate on one core, median 3.3
    # (benchmarks/test_export.py::test_export_c_scanner_vs_python_paths; 2026-12-07, five runs at load 3.5-6).
    "scan": "recorder.export._scan",
    # Blocks into records, record headers packed, the ordered merge's first descent; twin of segment/format.py's
    # _split_block and struct packing, ordered.py's _first_descent: reading a segment 1.7-2.1x
    # (benchmarks/test_segment_io.py: the reader at 0.42-0.59x a plain zstd split without it, 0.89-1.00x with it;
    # 2026-12-07, two runs each). `ime-segments cat` and merge gain less (0.9-1.4x): their output costs more.
    "block": "recorder.segment._block",
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
