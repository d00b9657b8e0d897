"""take()'s checks: the Python paths' flat lists -> exact Arrow columns (tables.py makes the tables of them).

A typed column holds only what its type says: an integer column int64 values (a float or an integer past 64 bits
is a null there and an `extras` row with the number as sent), a string column strings. A value of another kind
(a boolean, a string where a number belongs, ...) makes the frame malformed: its rows are dropped and the parser
reads it again, which gives its `messages` row and reason. Most batches pass the first test, one C-level
conversion of a whole group (array('q') takes only integers that fit int64).
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from types import NoneType
from typing import Any

import numpy as np
import pyarrow as pa

from recorder.export import schema as S
from recorder.export.pypaths import FRAME_WIDTH, PAYLOAD, PyPaths
from recorder.export.reading import INT64_MAX, INT64_MIN, LAYOUT, exact_object, json_text, value_at

_INT_TYPES = frozenset((int, NoneType))


@dataclass(slots=True)
class Checked:
    """The columns of one mask's group: frame indices, integer and string columns, and what was found."""

    fi: np.ndarray
    ints: list[pa.Array]
    strs: list[pa.Array]
    bad: set[int] = field(default_factory=set)  # frames with a mistyped value
    odd: list[tuple[int, int, Any]] = field(default_factory=list)  # (fi, integer column, value) not int64


def check_group(ints: list[Any], strs: list[Any], width: int, n_str: int) -> Checked:
    rows = len(ints) // width
    try:
        matrix = np.frombuffer(array("q", ints), np.int64).reshape(rows, width)
    except (TypeError, OverflowError):
        return _check_each(ints, strs, width, n_str)
    by_column = np.ascontiguousarray(matrix.T)
    out = Checked(by_column[0], [pa.array(c) for c in by_column[1:]], [])
    _str_columns(out, strs, n_str)
    # array('q') also takes True/False as 1/0: look at the few cells that hold 0 or 1.
    flat = matrix.reshape(-1)
    for k in np.flatnonzero((flat >> 1) == 0).tolist():
        if ints[k].__class__ is bool:
            out.bad.add(int(flat[k - k % width]))
    return out


def _check_each(ints: list[Any], strs: list[Any], width: int, n_str: int) -> Checked:
    """The per-value look, for a group with something other than int64s (rare): nulls in place of the rest."""
    fi = np.array(ints[0::width], np.int64)
    out = Checked(fi, [], [])
    _str_columns(out, strs, n_str)
    for j in range(1, width):
        col = ints[j::width]
        types = set(map(type, col))
        if types <= _INT_TYPES:
            try:
                out.ints.append(pa.array(col, pa.int64()))
                continue
            except (OverflowError, pa.ArrowInvalid):
                pass
        for i, v in enumerate(col):
            if v is None or (type(v) is int and INT64_MIN <= v <= INT64_MAX):
                continue
            if type(v) is int or type(v) is float:
                out.odd.append((int(fi[i]), j - 1, v))  # reported, never cast
            else:
                out.bad.add(int(fi[i]))
            col[i] = None
        out.ints.append(pa.array(col, pa.int64()))
    return out


def _str_columns(out: Checked, strs: list[Any], n_str: int) -> None:
    for j in range(n_str):
        col = strs[j::n_str]
        try:
            out.strs.append(pa.array(col, pa.string()))
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            out.bad.update(int(out.fi[i]) for i, v in enumerate(col) if v is not None and type(v) is not str)
            out.strs.append(pa.array([v if type(v) is str else None for v in col], pa.string()))


def check_groups(py: PyPaths) -> dict[int, Checked]:
    """Every group checked; frames with a mistyped value are read again by the parser until none is left."""
    while True:
        checked = {mask: check_group(ints, strs, 1 + sum(n for _, n, _ in LAYOUT[mask]),
                                     sum(n for _, _, n in LAYOUT[mask]))
                   for mask, (ints, strs) in py.groups.items()}
        bad = set().union(*(c.bad for c in checked.values()))
        if not bad:
            return checked
        _drop_frames(py, bad)
        for fi in sorted(bad):
            py.reparse(fi)


def _drop_frames(py: PyPaths, bad: set[int]) -> None:
    for mask, (ints, strs) in list(py.groups.items()):
        width = 1 + sum(n for _, n, _ in LAYOUT[mask])
        n_str = sum(n for _, _, n in LAYOUT[mask])
        keep = [r for r in range(len(ints) // width) if ints[r * width] not in bad]
        if keep:
            py.groups[mask] = ([v for r in keep for v in ints[r * width:(r + 1) * width]],
                               [v for r in keep for v in strs[r * n_str:(r + 1) * n_str]])
        else:
            del py.groups[mask]
    extras = py.extras
    py.extras = [v for r in range(0, len(extras), 5) if extras[r] not in bad for v in extras[r:r + 5]]


def report_odd(py: PyPaths, checked: dict[int, Checked], counts: Counter[str]) -> None:
    """Numbers that are not int64: null in their column, an `extras` row with the number exactly as sent."""
    for mask, c in checked.items():
        paths = [(s.key, path) for s, _, _ in LAYOUT[mask] for path in s.paths[s.n_str:]]
        for fi, j, v in c.odd:
            section, path = paths[j]
            # orjson reads integers past 64 bits as floats; the exact decode tells them apart.
            exact = value_at(exact_object(py.frames[fi * FRAME_WIDTH + PAYLOAD]), ("data", section, *path))
            if exact is None:
                exact = v
            reason = S.OUT_OF_RANGE if type(exact) is int else S.NOT_INTEGER
            py.extras.extend((fi, ".".join((section, *path[:-1])), path[-1], reason, json_text(exact)))
            counts[reason] += 1


def section_columns(checked: dict[int, Checked]) -> dict[str, list[Any]]:
    """Per section table: [frame indices (numpy), string columns..., integer columns...], in frame order."""
    parts: dict[str, list[list[Any]]] = {}
    for mask, c in checked.items():
        i = s = 0
        for section, n_int, n_str in LAYOUT[mask]:
            parts.setdefault(section.table, []).append([c.fi, *c.strs[s:s + n_str], *c.ints[i:i + n_int]])
            i += n_int
            s += n_str
    out = {}
    for table, pieces in parts.items():
        if len(pieces) == 1:
            fi, *cols = pieces[0]
        else:
            fi = np.concatenate([p[0] for p in pieces])
            cols = [pa.concat_arrays([p[j] for p in pieces]) for j in range(1, len(pieces[0]))]
        if len(fi) > 1 and bool((fi[1:] < fi[:-1]).any()):
            order = np.argsort(fi, kind="stable")
            fi, cols = fi[order], [c.take(pa.array(order)) for c in cols]
        out[table] = [fi, *cols]
    return out
