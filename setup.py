"""The parts pyproject.toml cannot say: the optional C extension (the trace probe's compiled
fast path) and the built-in scenarios, kept in the top-level `scenarios/` folder and installed
as the package data of `sqlite_lockprobe.scenarios`. `optional=True`: without a compiler,
lockprobe installs and the probe records through its pure-Python twin
(sqlite_lockprobe/probe/traced.py)."""

from setuptools import Extension, find_packages, setup

setup(
    packages=[*find_packages(include=["sqlite_lockprobe*"]), "sqlite_lockprobe.scenarios"],
    package_dir={"sqlite_lockprobe.scenarios": "scenarios"},
    ext_modules=[
        Extension(
            "sqlite_lockprobe.probe._speedups",
            sources=["sqlite_lockprobe/probe/_speedups.c"],
            optional=True,
        )
    ],
)
