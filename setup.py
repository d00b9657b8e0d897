"""The one thing pyproject.toml cannot say: the export's optional C fast path (recorder/export/_scan.c).

`optional=True`: without a compiler or Python headers the install still succeeds, and the export runs its
pure-Python path (slower, same tables; `ime-segments export` says which path ran).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("recorder.export._scan", ["recorder/export/_scan.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"])])
