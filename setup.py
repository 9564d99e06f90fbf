"""Only the optional C extension (the trace probe's compiled fast path): the metadata is in
pyproject.toml. `optional=True`: without a compiler, lockprobe installs and the probe records
through its pure-Python twin (sqlite_lockprobe/traced.py)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sqlite_lockprobe._speedups",
            sources=["sqlite_lockprobe/_speedups.c"],
            optional=True,
        )
    ]
)
