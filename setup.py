"""Only what pyproject.toml cannot say: the optional compiled hot path.

rokv.worker._native (worker/_native.c) is built when a C compiler and Python's
headers are there; when they are not, the build goes on without it and rokv
runs its pure-Python path, saying so once in the log (rokv.worker.native).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rokv.worker._native",
            ["worker/_native.c"],
            optional=True,  # no compiler: install anyway, pure Python
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wno-missing-braces"],
        )
    ]
)
