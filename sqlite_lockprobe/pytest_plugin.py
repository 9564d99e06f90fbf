"""`pytest --lockprobe`: the pytest plugin (registered through the `pytest11` entry point).

Installed, it is off: it adds its options, ini key and marker, and nothing else. Only when
asked (`--lockprobe`, or `lockprobe = true` in the ini) does it import the recorder and
register the plugin that records (pytest_recording.py), so a suite that does not ask pays
for one option lookup. See docs/pytest.md.
"""

from __future__ import annotations

import os

import pytest

# tracer.ENV_DIR, named here so that being off imports nothing of the probe: set in a process
# that `lockprobe trace` runs, which records it already.
TRACE_ENV = "LOCKPROBE_TRACE_DIR"

MARKER = (
    "lockprobe(expect=[PATTERN, ...]): with --lockprobe, fail unless lockprobe finds these "
    "patterns during the test (a regression test that reproduces a locking bug)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lockprobe", "lockprobe: why sqlite3 says 'database is locked'")
    group.addoption(
        "--lockprobe",
        action="store_true",
        default=None,
        help="Record every sqlite3 connection the tests open and diagnose each test's lock "
        "problems (lockprobe's probe; see docs/pytest.md).",
    )
    group.addoption(
        "--lockprobe-fail-on",
        action="append",
        default=None,
        metavar="PATTERN[,PATTERN]",
        help="Fail a test when lockprobe finds one of these patterns during it ('any': any "
        "finding). Default: any finding of severity error.",
    )
    group.addoption(
        "--lockprobe-warn",
        action="store_true",
        default=False,
        help="Only warn about findings (a pytest warning and the summary): tests pass.",
    )
    group.addoption(
        "--lockprobe-json",
        metavar="FILE",
        default=None,
        help="Write the findings of every test as lockprobe's JSON report, each with its nodeid.",
    )
    parser.addini("lockprobe", "Turn lockprobe on as --lockprobe does.", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    if not enabled(config):
        return
    if os.environ.get(TRACE_ENV):  # before the probe is imported: trace's import hook waits
        raise pytest.UsageError(
            "--lockprobe: this pytest runs under `lockprobe trace`, which records it already "
            "(use one or the other)"
        )
    from sqlite_lockprobe.pytest_recording import LockprobePlugin  # only when asked

    config.pluginmanager.register(LockprobePlugin.from_config(config), "lockprobe-recording")


def enabled(config: pytest.Config) -> bool:
    """--lockprobe, or else the ini's `lockprobe`."""
    option = config.getoption("lockprobe")
    if option is not None:
        return bool(option)
    return bool(config.getini("lockprobe"))
