"""The one pattern registry (diagnose/registry.py): every registered pattern has its detector
module, its documentation and its place in the precedence; and every command that takes
pattern ids refuses an unknown one the same way, through the real CLI, before running
anything."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sqlite_lockprobe.diagnose import causes
from sqlite_lockprobe.diagnose.detectors import DETECTORS
from sqlite_lockprobe.diagnose.registry import PATTERNS, PRECEDENCE

from .diagnose.test_detectors import everything

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Patterns the everything() timeline does not show (it has no WAL samples, filesystem event or
# lone failure): their detectors must find nothing there rather than another pattern's case.
NOT_IN_EVERYTHING = {"checkpoint-starvation", "network-filesystem", "unexplained-busy"}


def test_every_registered_pattern_has_a_detector_module_named_after_it() -> None:
    for pattern in PATTERNS:
        module = importlib.import_module(pattern.module)
        assert pattern.id == module.PATTERN
        assert DETECTORS[pattern.id] is module.detect
    assert tuple(DETECTORS) == PRECEDENCE


def test_each_detector_alone_reports_only_its_own_pattern() -> None:
    """Run alone on a timeline that shows every pattern, each detector finds its own case and
    findings carrying its own id only (precedence keeps it off the other patterns' waits)."""
    timeline = everything().build()
    for pattern_id, detect in DETECTORS.items():
        found = {f.pattern for f in detect(timeline)}
        expected = set() if pattern_id in NOT_IN_EVERYTHING else {pattern_id}
        assert found == expected, pattern_id


def test_wait_claims_follow_the_registry_order() -> None:
    claimed = [pattern for pattern, _ in causes.CLAIM_ORDER]
    assert claimed == [p for p in PRECEDENCE if p in causes.CLAIMS]
    assert set(causes.CLAIMS) <= set(PRECEDENCE)


def test_every_pattern_is_documented_for_users() -> None:
    patterns_md = (DOCS / "patterns.md").read_text()
    headings = re.findall(r"^## ([a-z-]+)$", patterns_md, re.M)
    contract = (DOCS / "json-report.md").read_text()
    for pattern in PATTERNS:
        assert pattern.id in headings, f"docs/patterns.md has no '## {pattern.id}' section"
        assert f"`{pattern.id}`" in contract, f"docs/json-report.md does not list {pattern.id}"


def lockprobe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # a hung command fails instead of hanging CI; never an assertion
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("check", "healthy", "-q", "--expect", "helthy"), "--expect"),
        (("check", "healthy", "-q", "--forbid", "helthy"), "--forbid"),
        (("run", "healthy", "-q", "--events", "ran.jsonl", "--expect", "helthy"), "--expect"),
        (("report", "missing.jsonl", "-q", "--expect", "helthy"), "--expect"),
        (("trace", "-q", "--fail-on", "helthy", "--", "python", "ran.py"), "--fail-on"),
        (("trace", "-q", "--expect", "helthy", "--", "python", "ran.py"), "--expect"),
    ],
)
def test_an_unknown_pattern_id_is_the_same_error_in_every_command(
    tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    (tmp_path / "ran.py").write_text("open('ran.jsonl', 'w').close()\n")
    result = lockprobe(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"lockprobe: {option}: unknown pattern id 'helthy' (expected one of: ")
    for pattern_id in PRECEDENCE:
        assert pattern_id in line
    assert result.stdout == ""
    assert not (tmp_path / "ran.jsonl").exists()  # refused before running anything


def test_the_words_for_none_and_any_are_taken_where_they_mean_something(tmp_path: Path) -> None:
    result = lockprobe(tmp_path, "check", "healthy", "-q", "--forbid", "healthy")
    assert result.returncode == 2
    assert "--forbid: unknown pattern id 'healthy'" in result.stderr
    result = lockprobe(tmp_path, "report", "missing.jsonl", "-q", "--expect", "any")
    assert result.returncode == 2
    assert "--expect: unknown pattern id 'any'" in result.stderr
