"""Reading the contract list from --ids-file/--names-file/--ids/--names: pure parsing, precise errors."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from recorder.errors import UserError

MAX_CONTRACT_LENGTH = 256


@dataclass(frozen=True, slots=True)
class ContractList:
    contracts: tuple[str, ...]
    duplicates: tuple[str, ...]  # removed, in the order they were met again


def _problem(value: str, kind: str) -> str | None:
    if len(value) > MAX_CONTRACT_LENGTH:
        return f"longer than {MAX_CONTRACT_LENGTH} characters"
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs", "Co") or ch in "\ufeff\ufffd":
            return f"contains the control or invalid character U+{ord(ch):04X}"
    # Ids are single tokens on the wire; whitespace or a comma means two ids ran together.
    if kind == "id" and (any(ch.isspace() for ch in value) or "," in value):
        return "an id cannot contain spaces or commas (one id per line)"
    # IME contract ids are ASCII digits; anything else (`abc`, `1002;`, Persian digits) is a typo that would
    # only come back from the server as a refusal, one connection later.
    if kind == "id" and not (value.isascii() and value.isdigit()):
        return "an id is digits only, e.g. 1001 ('#' starts a comment)"
    return None


def parse_lines(lines: Iterable[str], kind: str, source: str) -> ContractList:
    """One contract per line; blank lines and lines starting with '#' are ignored; duplicates dropped.

    Ids are digits, so in an ids list '#' starts a comment anywhere (`1001  # gold`). Names may contain
    spaces, '/', '&', '+', '#' and Persian text (`UREA#46`), so only surrounding whitespace is stripped and
    '#' starts a comment only at the beginning of a line.
    """
    seen: set[str] = set()
    out: list[str] = []
    dups: list[str] = []
    for number, raw in enumerate(lines, start=1):
        value = (raw.split("#", 1)[0] if kind == "id" else raw).strip()
        if not value or value.startswith("#"):
            continue
        problem = _problem(value, kind)
        if problem is not None:
            raise UserError(f"{source}, line {number}: {problem}: {value[:60]!r}")
        if value in seen:
            dups.append(value)
            continue
        seen.add(value)
        out.append(value)
    if not out:
        raise UserError(f"{source} lists no contracts (one {kind} per line; '#' starts a comment)")
    return ContractList(tuple(out), tuple(dups))


def read_contract_file(path: Path, kind: str) -> ContractList:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give a file with one contract {kind} per line") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; give a file with one contract {kind} per line") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}, line {line}: not valid UTF-8; save the file as UTF-8") from None
    return parse_lines(text.splitlines(), kind, str(path))


def parse_inline(value: str, kind: str) -> ContractList:
    """--ids 1001,1002 / --names 'A,B': comma-separated on the command line."""
    return parse_lines(value.split(","), kind, f"--{kind}s")
