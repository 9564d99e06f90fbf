"""The public API (sqlite_lockprobe/__init__.py, docs/api.md): every name in `__all__` is the
function or class it stands for, importing the package loads none of them, and each example in
docs/api.md's "The whole API" section runs as written, in a fresh interpreter."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sqlite_lockprobe

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"
SAFETY_TIMEOUT = 120  # seconds: a hung example fails instead of hanging CI; never an assertion


def api_examples() -> dict[str, str]:
    """Each `### sqlite_lockprobe.NAME` section's python example, by NAME."""
    text = DOCS.read_text()
    whole_api = text[text.index("## The whole API") :]
    sections = re.findall(
        r"^### `sqlite_lockprobe\.(\w+)`\n(.*?)(?=^### |\Z)", whole_api, re.S | re.M
    )
    examples = {}
    for name, body in sections:
        [code] = re.findall(r"```python\n(.*?)```", body, re.S)
        examples[name] = code
    return examples


def test_every_public_name_is_the_object_it_stands_for() -> None:
    assert sorted(sqlite_lockprobe.__all__) == sorted(["__version__", *sqlite_lockprobe._LAZY])
    for name in sqlite_lockprobe.__all__:
        if name == "__version__":
            continue
        module = importlib.import_module(sqlite_lockprobe._LAZY[name])
        assert getattr(sqlite_lockprobe, name) is getattr(module, name), name
        assert name in dir(sqlite_lockprobe)
    with pytest.raises(AttributeError):
        sqlite_lockprobe.no_such_name  # noqa: B018


def test_importing_the_package_loads_nothing_else() -> None:
    """The probe injected into traced programs imports the package: it must stay this cheap."""
    code = "import json, sys, sqlite_lockprobe; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(out))
    assert {m for m in loaded if m.startswith("sqlite_lockprobe")} == {"sqlite_lockprobe"}
    assert not loaded & {"click", "rich", "orjson", "psutil"}


def test_every_documented_function_has_its_example() -> None:
    documented = set(api_examples())
    assert documented == {"run_scenario", "trace_program", "analyze", "inspect_database"}
    assert documented <= set(sqlite_lockprobe.__all__)


@pytest.mark.parametrize("name", ["run_scenario", "trace_program", "analyze", "inspect_database"])
def test_the_example_runs(tmp_path: Path, name: str) -> None:
    script = tmp_path / f"{name}_example.py"
    script.write_text(api_examples()[name])
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()
