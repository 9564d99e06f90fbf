"""The pipeline's direction, sources -> events -> diagnose -> report, held by the imports
themselves: checked in fresh interpreters (and, for worker processes, in a real run), since a
module imported once anywhere in the test session hides who imports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SAFETY_TIMEOUT = 120  # seconds: a hung command fails instead of hanging CI; never an assertion

# Modules that run a workload or a program, or judge one: sources and workflows.
SOURCES = (
    "sqlite_lockprobe.runner",
    "sqlite_lockprobe.tracing",
    "sqlite_lockprobe.checking",
    "sqlite_lockprobe.comparefix",
    "sqlite_lockprobe.scenario",
    "sqlite_lockprobe.workers",
)


def loaded_after_importing(package: str) -> set[str]:
    """Every lockprobe module a fresh interpreter holds after importing each module of
    `package`."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"package = importlib.import_module({package!r})\n"
        "for info in pkgutil.iter_modules(package.__path__):\n"
        "    importlib.import_module(package.__name__ + '.' + info.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sqlite_lockprobe'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=SAFETY_TIMEOUT,
    ).stdout
    return set(json.loads(out))


def test_renderers_import_no_source() -> None:
    loaded = loaded_after_importing("sqlite_lockprobe.report")
    assert not {m for m in loaded if m.startswith(SOURCES)}


def test_the_diagnosis_imports_nothing_after_it_in_the_pipeline() -> None:
    loaded = loaded_after_importing("sqlite_lockprobe.diagnose")
    outside = {m for m in loaded if not m.startswith("sqlite_lockprobe.diagnose")}
    # The package, the finding and error types, and what the events say (result codes, the
    # databases a recording used, the filesystem a database is on).
    assert outside == {
        "sqlite_lockprobe",
        "sqlite_lockprobe.errors",
        "sqlite_lockprobe.findings",
        "sqlite_lockprobe.resultcodes",
        "sqlite_lockprobe.databases",
        "sqlite_lockprobe.filesystems",
    }


def test_spawned_worker_processes_do_not_import_the_detectors(tmp_path: Path) -> None:
    """A scenario's pattern ids are checked against the registry alone: each spawned worker
    process (it loads the scenario's classes) imports neither the detectors nor causes.py.
    Python's import-time log (PYTHONPROFILEIMPORTTIME) covers every process of the run."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "run", "process-long-write", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    workers = imported.count("sqlite_lockprobe.workers.program")
    assert workers >= 5  # the parent and its worker processes
    assert imported.count("sqlite_lockprobe.diagnose.registry") == workers
    assert imported.count("sqlite_lockprobe.diagnose.detectors") == 1  # the parent's
    assert imported.count("sqlite_lockprobe.diagnose.causes") == 1
