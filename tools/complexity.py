"""Size limits for the code under recorder/ (part of `make lint`).

    python tools/complexity.py [PATH ...] [--max-cc 15] [--max-class-lines 250]

Fails (exit 1, one line per offender: `path:line name: figure > limit`) when a function or method, closures
included, has a cyclomatic complexity (radon's, as cc_visit) above --max-cc, or a class spans more lines than
--max-class-lines; prints one OK line otherwise. PATH defaults to recorder/ beside this script; a directory
is searched for *.py. A path that does not exist or a file that does not parse is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from radon.visitors import Class, ComplexityVisitor, Function

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Offence:
    path: str
    line: int
    name: str
    what: str
    figure: int
    limit: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.name}: {self.what} {self.figure} > {self.limit}"


def _functions(blocks: Iterable[Function | Class], prefix: str = "") -> Iterator[tuple[str, Function]]:
    """Every function with its dotted name: methods, inner classes' methods and closures too, since
    radon's figure for a function leaves its closures' branches out and a closure could hide them."""
    for block in blocks:
        name = f"{prefix}{block.name}"
        if isinstance(block, Class):
            yield from _functions([*block.methods, *block.inner_classes], f"{name}.")
        else:
            yield name, block
            yield from _functions(block.closures, f"{name}.")


def _classes(blocks: Iterable[Function | Class], prefix: str = "") -> Iterator[tuple[str, Class]]:
    for block in blocks:
        name = f"{prefix}{block.name}"
        if isinstance(block, Class):
            yield name, block
            yield from _classes([*block.methods, *block.inner_classes], f"{name}.")
        else:
            yield from _classes(block.closures, f"{name}.")


def check_source(source: str, path: str, max_cc: int, max_class_lines: int) -> list[Offence]:
    """The offences in one module's source (SyntaxError when it does not parse)."""
    # The visitor's own top-level lists, not cc_visit's flat one: that repeats each method beside its class.
    visitor = ComplexityVisitor.from_code(source)
    blocks = [*visitor.functions, *visitor.classes]
    found = [Offence(path, fn.lineno, name, "cyclomatic complexity", fn.complexity, max_cc)
             for name, fn in _functions(blocks) if fn.complexity > max_cc]
    for name, cls in _classes(blocks):
        span = cls.endline - cls.lineno + 1
        if span > max_class_lines:
            found.append(Offence(path, cls.lineno, name, "class lines", span, max_class_lines))
    return sorted(found, key=lambda o: o.line)


def python_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.py") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def shown(path: Path) -> str:
    """The path as the reader would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "recorder"])
    parser.add_argument("--max-cc", type=int, default=15, help="highest cyclomatic complexity allowed (15)")
    parser.add_argument("--max-class-lines", type=int, default=250, help="longest class allowed, in lines (250)")
    args = parser.parse_args(argv)
    try:
        files = python_files(args.paths)
    except FileNotFoundError as e:
        print(f"complexity: {e}", file=sys.stderr)
        return 2
    offences: list[Offence] = []
    for file in files:
        try:
            offences.extend(check_source(file.read_text(encoding="utf-8"), shown(file),
                                         args.max_cc, args.max_class_lines))
        except (SyntaxError, UnicodeDecodeError) as e:
            print(f"complexity: {file}: cannot parse: {e}", file=sys.stderr)
            return 2
    for offence in offences:
        print(offence)
    if offences:
        return 1
    print(f"complexity OK: {len(files)} files, no function over cyclomatic complexity {args.max_cc}, "
          f"no class over {args.max_class_lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
