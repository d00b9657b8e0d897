"""A TEXT payload -> the values of its section rows, two ways with one meaning, both driven by schema.py's tables.

`SECTIONS` holds, per section table, the wire key under `data` and the columns' paths under it (string columns
first, as in the schema). A message's values are kept as (mask, ints, strs): which sections it has (one bit each,
SECTIONS order) and their integer and string values concatenated in that order, so that every message of one
mask is one row of one flat list.

`FastReader` takes a payload of exactly the documented shape — known keys only, every BestLimit level, a
timestamp of the common forms — from orjson's objects without building anything else (its section reader is
written from SECTIONS); anything else raises `Slow`. Value types are not looked at here: columns.py checks whole
columns at once, and hands the few frames with a mistyped field to the parser. `parse` is that parser
(feed/message.py's, on the stdlib's exact decode so that integers past 64 bits stay exact): it reads every frame,
and says what does not fit a typed column."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from recorder.export import schema as S
from recorder.feed.message import (
    _LEVEL,
    ID_FIELD,
    NAME_FIELD,
    Envelope,
    MessageError,
    envelope_from_object,
    parse_envelope,
    parse_timestamp_ns,
)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_POW10 = tuple(10 ** (9 - n) for n in range(10))


class Slow(Exception):
    """This payload is not of the documented shape (or not JSON): the parser takes it."""


@dataclass(frozen=True, slots=True)
class Section:
    table: str
    key: str  # under `data`
    bit: int
    paths: tuple[tuple[str, ...], ...]  # of the columns under the section, string columns first
    n_str: int


def _section(bit: int, table: str) -> Section:
    cols = S.STR_COLUMNS.get(table, []) + S.INT_COLUMNS[table]
    return Section(table, S.SECTION_OF[table], bit, tuple(path[1:] for _, path in cols),
                   len(S.STR_COLUMNS.get(table, [])))


SECTIONS = tuple(_section(1 << i, t) for i, t in enumerate(S.SECTION_TABLES))
POPCOUNT = tuple(bin(mask).count("1") for mask in range(1 << len(SECTIONS)))
# (section, int columns, string columns) per section of a mask, in SECTIONS order.
LAYOUT = tuple(tuple((s, len(s.paths) - s.n_str, s.n_str) for s in SECTIONS if mask & s.bit)
               for mask in range(1 << len(SECTIONS)))


def _section_code(section: Section, getters: dict[str, Any]) -> tuple[list[str], list[str], list[str], list[str]]:
    """For one section in `p`: statements binding the objects under it, the size test of every object, and its
    integer and string values as expressions, each in column order (a run of columns of one object is one
    itemgetter call, added to `getters`)."""
    names = {(): "p"}
    keys: dict[tuple[str, ...], list[str]] = {}  # object path -> its known keys
    code = []
    for path in section.paths:
        for depth, key in enumerate(path):
            known = keys.setdefault(path[:depth], [])
            if key not in known:
                known.append(key)
            if depth < len(path) - 1 and path[:depth + 1] not in names:
                names[path[:depth + 1]] = var = f"p_{len(names)}"
                code.append(f"{var} = {names[path[:depth]]}[{key!r}]")
    checks = [f"len({names[obj]}) != {len(known)}" for obj, known in keys.items()]

    def values(paths: tuple[tuple[str, ...], ...]) -> list[str]:
        out: list[str] = []
        runs: list[tuple[tuple[str, ...], list[str]]] = []
        for path in paths:
            if runs and runs[-1][0] == path[:-1]:
                runs[-1][1].append(path[-1])
            else:
                runs.append((path[:-1], [path[-1]]))
        for obj, run in runs:
            if len(run) == 1:
                out.append(f"{names[obj]}[{run[0]!r}]")
            else:
                name = f"get_{len(getters)}"
                getters[name] = itemgetter(*run)
                out.append(f"*{name}({names[obj]})")
        return out

    return code, checks, values(section.paths[section.n_str:]), values(section.paths[:section.n_str])


def sections_source(getters: dict[str, Any] | None = None) -> str:
    """The source of `read_sections(data, first) -> (mask, (first, *ints), strs)`, written from SECTIONS
    (`getters` gets the itemgetters it calls). `first` is the frame index a group row starts with.

    Straight-line code, one block per section: it is the fast path's inner loop, and a loop over the sections
    with a reader function each made the Python paths ~10% slower. Each object must hold exactly its known keys
    (as many keys, each found); a missing key raises KeyError, a non-object TypeError, either means Slow.
    """
    getters = {} if getters is None else getters
    out = ["def read_sections(data, first):", "    mask = 0"]
    ints: list[str] = []  # one variable per piece of values, set in its section's block, () without it
    strs: list[str] = []
    for sec in SECTIONS:
        code, checks, int_values, str_values = _section_code(sec, getters)
        names = [[f"v{len(ints) + n}" for n in range(len(int_values))],
                 [f"w{len(strs) + n}" for n in range(len(str_values))]]
        ints += names[0]
        strs += names[1]
        out += [f"    p = data.get({sec.key!r})", "    if p is None:",
                f"        {' = '.join([*names[0], *names[1], '()'])}", "    else:",
                *(f"        {line}" for line in code),
                f"        if {' or '.join(checks)}:", "            raise Slow",
                *(f"        {name} = {_piece(value)}" for name, value in zip(names[0], int_values, strict=True)),
                *(f"        {name} = {_piece(value)}" for name, value in zip(names[1], str_values, strict=True)),
                f"        mask |= {sec.bit}"]
    out += ["    if not mask or POPCOUNT[mask] != len(data):", "        raise Slow",
            f"    return mask, (first, {''.join(f'*{v}, ' for v in ints)}), ({''.join(f'*{w}, ' for w in strs)})"]
    return "\n".join(out) + "\n"


def _piece(value: str) -> str:
    """A value expression as a tuple: `*get(obj)` is a getter's tuple already, `obj[key]` one value."""
    return value[1:] if value.startswith("*") else f"({value},)"


def _compile() -> Callable[[dict[str, Any], int], tuple[int, tuple[Any, ...], tuple[Any, ...]]]:
    scope: dict[str, Any] = {"Slow": Slow, "POPCOUNT": POPCOUNT}
    source = sections_source(scope)
    exec(compile(source, "<recorder.export.reading.sections_source()>", "exec"), scope)
    return scope["read_sections"]


read_sections = _compile()

# What a read gives: contract, identifier field, channel, server ns, mask, (fi, *integer values), string values.
Values = tuple[str, str, str, int, int, tuple[Any, ...], tuple[Any, ...]]


class FastReader:
    """The documented shape, read from orjson's objects; `Slow` for anything else."""

    def __init__(self) -> None:
        self._seconds: dict[str, int] = {}  # whole-second part of a timestamp -> epoch ns

    def read(self, payload: bytes, fi: int) -> Values:
        """The message's values; its integers start with `fi`, as a row of its mask's group does."""
        try:
            obj = orjson.loads(payload)
            ident = obj.get(ID_FIELD)
            id_field = ID_FIELD
            if ident is None:
                ident = obj[NAME_FIELD]
                id_field = NAME_FIELD
            channel, stamp, data = obj["channel"], obj["timestamp"], obj["data"]
            if (len(obj) != 4 or type(ident) is not str or not ident or type(channel) is not str
                    or type(stamp) is not str or type(data) is not dict):
                raise Slow
            mask, ints, strs = read_sections(data, fi)
            # The common `...:SS.ffffffZ` form without a call: the whole second from the cache, the fraction by int().
            base = self._seconds.get(stamp[:19])
            frac = stamp[20:-1]
            if (base is None or stamp[19:20] != "." or stamp[-1:] != "Z" or not 0 < len(frac) < 10
                    or not frac.isdigit() or not frac.isascii()):
                return ident, id_field, channel, self.server_ns(stamp), mask, ints, strs
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise Slow from None
        return ident, id_field, channel, base + int(frac) * _POW10[len(frac)], mask, ints, strs

    def server_ns(self, stamp: str) -> int:
        """`YYYY-MM-DDTHH:MM:SS.f{1,9}Z` in ns; any other form raises Slow (the parser reads the others).

        The whole second goes through message.py's parse_timestamp_ns once and is cached; the fraction is int().
        """
        frac = stamp[20:-1]
        if (stamp[19:20] != "." or stamp[-1:] != "Z" or not 0 < len(frac) < 10 or not frac.isdigit()
                or not frac.isascii()):
            raise Slow
        base = self._seconds.get(stamp[:19])
        if base is None:
            base = self._second(stamp[:19])
        return base + int(frac) * _POW10[len(frac)]

    def _second(self, head: str) -> int:
        try:
            base = parse_timestamp_ns(head)
        except MessageError:
            raise Slow from None
        if not INT64_MIN <= base <= INT64_MAX - 1_000_000_000:
            raise Slow  # beyond timestamp[ns] (before 1677 or after 2262): the parser reports it
        if len(self._seconds) > 4096:
            self._seconds.clear()
        self._seconds[head] = base
        return base


def exact_object(payload: bytes) -> Any:
    """The payload decoded with integers of any size kept exact (orjson turns those past 64 bits into floats)."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def json_text(value: Any) -> str:
    """JSON text of a decoded value; integers beyond 64 bits are written with all their digits."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def value_at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


@dataclass(frozen=True, slots=True)
class Parsed:
    """The parser's reading of a frame that is an envelope; `mask` 0 when it has no known section."""

    env: Envelope
    server_ns: int | None
    mask: int
    ints: tuple[Any, ...]
    strs: tuple[Any, ...]


def parse(payload: bytes) -> Parsed:
    """feed/message.py's reading of a payload; MessageError (one line) when it is not an envelope."""
    env = parse_envelope(payload)  # orjson decides what is JSON
    exact = exact_object(payload)
    obj = exact if exact is not None else orjson.loads(payload)
    if exact is not None:
        env = envelope_from_object(exact)
    server_ns = env.timestamp_ns
    if server_ns is not None and not INT64_MIN <= server_ns <= INT64_MAX:
        raise MessageError(f"timestamp {env.timestamp!r:.40} is beyond the ns range of 1677-2262")
    mask, ints, strs = 0, (), ()
    data = obj.get("data")
    for section in SECTIONS:
        if getattr(env.data, section.table) is not None:
            # The parser accepted the section: every known field is a number or a string (or null) as documented.
            values = tuple(value_at(data[section.key], path) for path in section.paths)
            mask |= section.bit
            strs += values[:section.n_str]
            ints += values[section.n_str:]
    return Parsed(env, server_ns, mask, ints, strs)


def no_section_reason(env: Envelope) -> str:
    unknown = ", ".join(sorted(env.data.extra))
    return f"no known section (unknown: {unknown})" if unknown else "no known section"


def extras_of(env: Envelope) -> list[tuple[str, str, str, str]]:
    """(section, field, reason, JSON text) of everything the parser kept aside: unknown fields, sections, levels."""
    out = [("envelope", k, S.UNKNOWN_FIELD, json_text(v)) for k, v in env.extra.items()]
    out += [("data", k, S.UNKNOWN_SECTION, json_text(v)) for k, v in env.data.extra.items()]
    for section in SECTIONS:
        part = getattr(env.data, section.table)
        if part is None:
            continue
        out += [(section.key, k, S.UNKNOWN_FIELD, json_text(v)) for k, v in part.extra.items()]
        for key, level in getattr(part, "levels", {}).items():
            out += _level_extras(section.key, key, level)
    return out


_LEVEL_ATTRS = tuple(attr for attr, _ in _LEVEL.values())


def _level_extras(where: str, key: str, level: Any) -> list[tuple[str, str, str, str]]:
    if key in S.LEVELS:
        return [(f"{where}.{key}", k, S.UNKNOWN_FIELD, json_text(v)) for k, v in level.extra.items()]
    known = {a: getattr(level, a) for a in _LEVEL_ATTRS if getattr(level, a) is not None}
    return [(where, key, S.UNKNOWN_LEVEL, json_text(known | dict(level.extra)))]
