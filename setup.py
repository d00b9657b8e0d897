"""The one thing pyproject.toml cannot say: the optional C fast paths, the export's scanner
(recorder/export/_scan.c), the dedupe's window (recorder/segment/_dedupe.c), the data-block split
(recorder/segment/_block.c) and the live hub's data path (recorder/live/_fanout.c).

`optional=True`: without a compiler or Python headers the install still succeeds, and each runs its pure-Python
implementation (slower, same results; `ime-segments export` says which path ran, `recorder.segment.dedupe.NATIVE`
which Deduper is in use, `recorder.live.fanout.NATIVE` which hub data path).
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra"]

setup(ext_modules=[
    Extension("recorder.export._scan", ["recorder/export/_scan.c"], optional=True, extra_compile_args=_FLAGS),
    Extension("recorder.segment._dedupe", ["recorder/segment/_dedupe.c"], optional=True, extra_compile_args=_FLAGS),
    Extension("recorder.segment._block", ["recorder/segment/_block.c"], optional=True, extra_compile_args=_FLAGS),
    Extension("recorder.live._fanout", ["recorder/live/_fanout.c"], optional=True, extra_compile_args=_FLAGS),
])
