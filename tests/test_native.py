"""recorder/native.py, the one switch for the C kernels: what each IME_NATIVE value selects in a fresh interpreter
(it is read at import), and a name it does not know said on stderr rather than taken as "all native"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recorder import native

HERE = str(Path(native.__file__).parents[1])  # this checkout's recorder package, not another one
PROBE = ("from recorder import native; from recorder.export import flatten; "
         "from recorder.segment import format; "
         "print(sorted(native.OFF), flatten.NATIVE, format._block is not None)")


def probe(value: str | None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != native.ENV}
    env["PYTHONPATH"] = os.pathsep.join([HERE, env.get("PYTHONPATH", "")])
    if value is not None:
        env[native.ENV] = value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    return out.stdout.strip(), out.stderr


@pytest.mark.skipif(not all(map(native.built, native.KERNELS)), reason="the C kernels are not built")
@pytest.mark.parametrize(("value", "expected"), [
    (None, "[] True True"),
    ("1", "[] True True"),
    ("", "[] True True"),
    ("0", "['block', 'scan'] False False"),
    (" Scan , ", "['scan'] False True"),
    ("scan,block", "['block', 'scan'] False False"),
    ("block", "['block'] True False"),
])
def test_one_variable_selects_the_python_paths_kernel_by_kernel(value: str | None, expected: str) -> None:
    stdout, stderr = probe(value)
    assert stdout == expected and stderr == ""


def test_an_unknown_kernel_name_is_said_in_one_line_and_the_known_ones_still_apply() -> None:
    stdout, stderr = probe("block,dedupe")
    assert stdout.startswith("['block'] ")
    assert stderr.splitlines() == [
        f"{native.ENV}: unknown kernel dedupe ignored (0, 1, or names among scan, block)"]


def test_every_kernel_named_is_an_extension_setup_py_builds() -> None:
    setup = (Path(HERE) / "setup.py").read_text()
    built = {line.split('"')[1] for line in setup.splitlines() if "Extension(" in line and '"' in line}
    assert built == set(native.KERNELS.values())
