"""The record model is spelled once: the C extensions' kind constants are the model's, and no module re-spells a
record kind as a literal or a module-level alias."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from recorder.model.record import KIND_LABELS, MESSAGE_KINDS, RECEIPT_BLOCK_KINDS, RecordKind, kind_label

PACKAGE = Path(__file__).resolve().parent.parent / "recorder"


@pytest.mark.parametrize("module", ["recorder.export._scan"])
def test_the_extensions_kind_constants_are_the_models(module: str) -> None:
    try:
        ext = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not built (no C compiler at install)")
    assert ext.KIND_TEXT == RecordKind.TEXT


def test_kinds_are_distinct_bytes_and_named() -> None:
    kinds = {k: v for k, v in vars(RecordKind).items() if k.isupper()}
    assert len(set(kinds.values())) == len(kinds) and all(0 < v < 256 for v in kinds.values())
    assert {RecordKind.TEXT, RecordKind.BINARY} == MESSAGE_KINDS
    assert {RecordKind.RECEIPT_BLOCK, RecordKind.RECEIPT_COLUMNS} == RECEIPT_BLOCK_KINDS
    assert [kind_label(k) for k in (1, 2, 3, 4, 99)] == ["text", "binary", "event", "receipt", "99"]
    assert set(KIND_LABELS) == {RecordKind.TEXT, RecordKind.BINARY, RecordKind.EVENT, RecordKind.RECEIPT}


def test_no_module_spells_a_record_kind_itself() -> None:
    """`kind == 3`, `TEXT, BINARY = 1, 2` or `_EVENT = RecordKind.EVENT` at module level re-spell the model."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "model" / "record.py":
            continue
        text = path.read_text()
        if re.search(r"\bkind\s*(==|!=|>|<|>=|<=)\s*\d", text) or re.search(r"\bkind in \(\d", text):
            offenders.append(f"{path}: a kind compared with a number")
        for node in ast.parse(text).body:
            # An alias: a module-level name for one kind, or a tuple of names for several.
            values = node.value.elts if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) else (
                [node.value] if isinstance(node, ast.Assign) else [])
            if values and all(ast.unparse(v).startswith(("RecordKind.", "int(RecordKind.")) for v in values):
                offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)
