"""The pipeline's direction, sources -> events -> diagnose -> report, held by the imports
themselves: checked in fresh interpreters (and, for worker processes, in a real run), since a
module imported once anywhere in the test session hides who imports it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sqlite_lockprobe"
SAFETY_TIMEOUT = 120  # seconds: a hung command fails instead of hanging CI; never an assertion

# Modules that run a workload or a program, or judge one: sources and workflows.
SOURCES = (
    "sqlite_lockprobe.sources.run.runner",
    "sqlite_lockprobe.sources.trace",
    "sqlite_lockprobe.workflows.checking",
    "sqlite_lockprobe.workflows.comparefix",
    "sqlite_lockprobe.sources.run.scenario",
    "sqlite_lockprobe.sources.run.workers",
)


def printed_json(code: str) -> Any:
    """What `code`, run in a fresh interpreter, prints as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=SAFETY_TIMEOUT,
    ).stdout
    return json.loads(out)


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
    return set(printed_json(code))


def test_renderers_import_no_source() -> None:
    loaded = loaded_after_importing("sqlite_lockprobe.report")
    assert not {m for m in loaded if m.startswith(SOURCES)}


def test_the_diagnosis_imports_nothing_after_it_in_the_pipeline() -> None:
    loaded = loaded_after_importing("sqlite_lockprobe.diagnose")
    outside = {m for m in loaded if not m.startswith("sqlite_lockprobe.diagnose")}
    # The package, the finding and error types, and what the events say (result codes, the
    # databases a recording used, the filesystem a database is on); the folders they are in,
    # and the collector's tuning that analysis.py shares with the run engine.
    assert outside == {
        "sqlite_lockprobe",
        "sqlite_lockprobe.errors",
        "sqlite_lockprobe.findings",
        "sqlite_lockprobe.events",
        "sqlite_lockprobe.events.resultcodes",
        "sqlite_lockprobe.events.databases",
        "sqlite_lockprobe.probe",
        "sqlite_lockprobe.probe.gctuning",
        "sqlite_lockprobe.sources",
        "sqlite_lockprobe.sources.inspect",
        "sqlite_lockprobe.sources.inspect.filesystems",
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
    workers = imported.count("sqlite_lockprobe.sources.run.workers.program")
    assert workers >= 5  # the parent and its worker processes
    assert imported.count("sqlite_lockprobe.diagnose.registry") == workers
    assert imported.count("sqlite_lockprobe.diagnose.detectors") == 1  # the parent's
    assert imported.count("sqlite_lockprobe.diagnose.causes") == 1


# The folders in the pipeline's order: a module imports from its own folder and the folders
# before it, never after. events/ comes first: the probe records in the events' schema and
# codec, and nothing in events/ knows who records. The root's cli.py, recorder.py and the
# pytest plugin come last; errors.py and findings.py (the two shapes every stage may produce)
# go anywhere.
STAGES = ("events", "probe", "sources", "diagnose", "workflows|report", "")
ANYWHERE = {"sqlite_lockprobe", "sqlite_lockprobe.errors", "sqlite_lockprobe.findings"}
# Pattern ids are the one vocabulary a scenario shares with the diagnosis: the registry, which
# imports nothing, validates a scenario's `expect` (tests/test_pattern_registry.py).
ALLOWED = {("sqlite_lockprobe.sources.run.scenario", "sqlite_lockprobe.diagnose.registry")}


def stage_of(module: str) -> int:
    parts = module.split(".")
    folder = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in _FOLDERS) else ""
    for rank, names in enumerate(STAGES):
        if folder in names.split("|"):
            return rank
    raise AssertionError(f"{module} is in no stage")


_FOLDERS = {name for names in STAGES for name in names.split("|") if name}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """The lockprobe modules `path` imports when it runs (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


@pytest.mark.parametrize(
    "path",
    sorted(PACKAGE.rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_import_runs_against_the_pipeline(path: Path) -> None:
    importer = module_name(path)
    against = {
        imported
        for imported in runtime_imports(path)
        if imported not in ANYWHERE
        and (importer, imported) not in ALLOWED
        and stage_of(imported) > stage_of(importer)
    }
    assert not against, f"{importer} imports from later stages: {sorted(against)}"


def test_the_probe_is_standard_library_only() -> None:
    """Every module of probe/ (the compiled one too) imported in a fresh interpreter where
    lockprobe's dependencies cannot be imported: nothing outside the standard library loads
    (the probe runs inside the traced program, with whatever that has installed)."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'click', 'rich', 'psutil', 'orjson', 'tomli'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "before = set(sys.modules)  # what site.py loaded (an editable install's finder)\n"
        "import sqlite_lockprobe.probe as probe\n"
        "names = [i.name for i in pkgutil.iter_modules(probe.__path__)]\n"
        "for name in names:\n"
        "    importlib.import_module('sqlite_lockprobe.probe.' + name)\n"
        "outside = sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names\n"
        "                 and not m.startswith('sqlite_lockprobe') and m != '__main__')\n"
        "ours = sorted(m for m in sys.modules if m.startswith('sqlite_lockprobe'))\n"
        "print(json.dumps([names, outside, ours]))\n"
    )
    names, outside, ours = printed_json(code)
    assert {"capi", "tracer", "traced", "callsite", "locktable"} <= set(names)
    assert outside == []
    assert {
        m for m in ours if not m.startswith(("sqlite_lockprobe.probe", "sqlite_lockprobe.events"))
    } <= ANYWHERE
