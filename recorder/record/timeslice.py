"""Asking Linux for a short CPU time slice for the thread that receives frames, and for the lowest priority for
the live hub, which must never take CPU time the workers need.

Measured on the 2-core benchmark machine: when the segment writer thread compresses a 1 MiB frame
(~0.5 ms) on the core the receive thread last ran on, the default EEVDF slice (~1.4 ms) lets it keep
that core while frames wait in the socket, so the ~10 frames that arrive right after each frame cut
carried most of the p99 receive latency. Since Linux 6.12 a normal (SCHED_OTHER) thread may request
a shorter slice through `sched_setattr(sched_runtime)`, without privileges; a thread with a shorter
slice preempts a longer-slice one when it wakes (PREEMPT_SHORT). The receive thread mostly sleeps in
epoll, so this costs the rest of the system nothing. Older kernels accept and ignore the request.

The short slice is not enough for the processes the receive thread wakes. Traced with `perf sched` at
20k msgs/s with `--relay` (2026-11-25): the live hub, with a 100 µs slice of its own, still waited
1.2-1.6 ms behind the writer thread compressing a 1 MiB frame (every ~70 ms at that rate) on about one
wake-up in 25, and so did a relay client: the woken task was not eligible to preempt under EEVDF's
fairness. That is why the writer thread used to run at nice 10 whenever live outputs were on; but a niced writer
loses to everything at nice 0, and at 100k msgs/s with `--publish` nats-server (nice 0, ~8 µs a message) starved
it: reading paused behind the writer, and ime-sim dropped what the recorder could not take. Per thread
(/proc/<pid>/task/<tid>/schedstat), in one such run of ~9 s the writer at nice 10 waited 7.6 s on the run queue
for 0.5 s of CPU. Recording comes first, so now the hub yields instead (`yield_cpu`, SCHED_IDLE): it runs only on
CPU time no normal task wants, a waking worker preempts it at once, and the writer keeps nice 0 unless the
operator asks otherwise (`--writer-nice`). Measured at 100k msgs/s with `--publish` (8 s runs, load 1.5-3.4 from
other work): hub at nice 0 and writer at 10 (before) lost 2,055-103,079 messages in each of four runs; hub idle
and writer at 0 lost nothing in three (receive p99 16-47 ms); hub idle with the writer still at 10 lost 9,184 in
one run of three. The relay pays for it: its p99 at 20k msgs/s rose from 1.1-1.4 ms to 1.8-3.9 ms (load 2-3).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "arm64": 274}
_SCHED_OTHER = 0
# "normal": the live hub keeps the workers' priority instead of yielding (to compare, or to rule it out).
HUB_PRIORITY_ENV = "IME_HUB_PRIORITY"
# The kernel clamps custom slices to [0.1 ms, 100 ms].
MIN_SLICE_US = 100
MAX_SLICE_US = 100_000


class _SchedAttr(ctypes.Structure):
    _fields_ = (  # struct sched_attr, SCHED_ATTR_SIZE_VER0
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    )


def clamp_slice_us(slice_us: int) -> int:
    return max(MIN_SLICE_US, min(MAX_SLICE_US, slice_us))


def request_slice(slice_us: int) -> str | None:
    """Ask for `slice_us` (0: the kernel's default) for the calling thread; None when done, else why not.

    Threads inherit the slice, so call this after starting the threads that do bulk work.
    """
    nr = _SYS_SCHED_SETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or nr is None:
        return f"not supported on {sys.platform}/{platform.machine()}"
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return "the operator chose another scheduling policy; left as it is"
        libc = ctypes.CDLL(None, use_errno=True)
        attr = _SchedAttr(ctypes.sizeof(_SchedAttr), _SCHED_OTHER, 0, os.getpriority(os.PRIO_PROCESS, 0), 0,
                          clamp_slice_us(slice_us) * 1000 if slice_us else 0, 0, 0)
        if libc.syscall(nr, 0, ctypes.byref(attr), 0) != 0:
            return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        return str(exc)
    return None


def lower_priority(native_id: int, nice: int) -> str | None:
    """Raise one thread's nice value by `nice` (Linux: a thread id names one thread); None when done, else why not.

    Raising is unprivileged; a value already above the result (an operator's `nice -n 15`) is left as it is.
    """
    if nice <= 0:
        return None
    if not sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS takes a process id, never a thread's
        return f"not supported on {sys.platform}"
    try:
        current = os.getpriority(os.PRIO_PROCESS, native_id)
        target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        if current < target:
            os.setpriority(os.PRIO_PROCESS, native_id, target)
    except (OSError, AttributeError) as exc:
        return str(exc)
    return None


def yield_cpu(pid: int = 0) -> str | None:
    """Give a process the lowest priority there is (SCHED_IDLE; nice 19 where that is refused); None when done.

    A SCHED_IDLE task runs only on CPU time that no normal task wants, and a normal task that wakes preempts it at
    once. Only the thread `pid` names (0: the calling one) changes, and the threads it starts later inherit it:
    call it before the process starts threads. Unprivileged (going back needs CAP_SYS_NICE).
    """
    if not sys.platform.startswith("linux"):
        return f"not supported on {sys.platform}"
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return None
    except (OSError, AttributeError) as exc:
        idle_refused = str(exc)
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    except OSError as exc:
        return f"SCHED_IDLE refused ({idle_refused}), nice 19 refused ({exc.strerror})"
    return None


def hub_yields() -> bool:
    """Whether the live hub runs at the lowest priority (the default) or, for comparison, at the workers'."""
    return os.environ.get(HUB_PRIORITY_ENV, "").lower() != "normal"
