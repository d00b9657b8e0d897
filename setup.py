"""The one thing pyproject.toml cannot say: the optional C kernels, the export's scanner (recorder/export/_scan.c)
and the data-block split (recorder/segment/_block.c); the list, and why each is kept, is recorder/native.py's.

`optional=True`: without a compiler or Python headers the install still succeeds, and each runs its pure-Python
twin (slower, same results); so does every one with IME_NATIVE=0 (recorder/native.py). `ime-segments export` says
which parser ran.
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra"]

setup(ext_modules=[
    Extension("recorder.export._scan", ["recorder/export/_scan.c"], optional=True, extra_compile_args=_FLAGS),
    Extension("recorder.segment._block", ["recorder/segment/_block.c"], optional=True, extra_compile_args=_FLAGS),
])
