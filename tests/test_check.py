"""`lockprobe check`: real runs of built-in scenarios held to limits; exit codes, the
`[check]` table, JUnit XML and the JSON envelope, read back the way CI tools read them."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sqlite_lockprobe.sources.run.scenario import (
    builtin_dir,
    builtin_names,
    load_scenario,
    parse_scenario,
)
from sqlite_lockprobe.sources.run.thresholds import Thresholds
from sqlite_lockprobe.workflows.checking import effective_thresholds, load_targets

from .conftest import snapshot

NO_TIMEOUT = (builtin_dir() / "no-busy-timeout.toml").read_text()


def scenario_file(directory: Path, name: str, check_table: str = "") -> Path:
    """A copy of the built-in no-busy-timeout scenario (3 BUSY errors, one finding) with a
    [check] table appended."""
    path = directory / f"{name}.toml"
    text = NO_TIMEOUT.replace('name = "no-busy-timeout"', f'name = "{name}"')
    path.write_text(text + ("\n[check]\n" + check_table if check_table else ""))
    return path


def junit_cases(path: Path) -> dict[tuple[str, str], ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    cases = suites[0].findall("testcase")
    assert int(suites[0].get("tests", "-1")) == len(cases)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    assert int(suites[0].get("failures", "-1")) == failures
    return {(c.get("classname", ""), c.get("name", "")): c for c in cases}


def test_builtin_smoke_set_passes_and_writes_junit_and_json(tmp_path: Path) -> None:
    junit, report = tmp_path / "check.xml", tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "check", "--junit", str(junit)]
        + ["--json", str(report)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = builtin_names()
    assert f"{len(names)} passed, 0 failed" in proc.stdout
    cases = junit_cases(junit)
    # Each built-in has its own expect list: checked, with the run's completion.
    assert set(cases) == {(f"lockprobe.{n}", c) for n in names for c in ("completed", "expect")}
    assert all(c.find("failure") is None for c in cases.values())
    document = json.loads(report.read_text())
    assert document["schema_version"] == 1 and document["command"] == "check"
    assert document["passed"] is True
    assert [s["name"] for s in document["scenarios"]] == names
    found = sorted((f["scenario"], f["pattern"]) for f in document["findings"])
    expected = sorted((n, p) for n in names for p in load_scenario(n).expect or ())
    assert found == expected


def test_max_busy_errors_0_fails_no_busy_timeout_with_exit_1(invoke, tmp_path: Path) -> None:
    junit, report = tmp_path / "check.xml", tmp_path / "check.json"
    result = invoke(
        "check", "no-busy-timeout", "--max-busy-errors", "0", "--junit", str(junit),
        "--json", str(report),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    scenario = json.loads(report.read_text())["scenarios"][0]
    assert scenario["passed"] is False
    busy = {r["name"]: r for r in scenario["results"]}["max-busy-errors"]
    measured = scenario["summary"]["total"]["busy_errors"]
    assert busy["measured"] == measured > 0 and busy["limit"] == 0 and not busy["passed"]
    failure = junit_cases(junit)[("lockprobe.no-busy-timeout", "max-busy-errors")].find("failure")
    assert failure is not None
    assert f"{measured} call(s) failed with SQLITE_BUSY (limit 0)" in failure.get("message", "")
    assert "no-busy-timeout" in (failure.text or "")
    assert "FAIL" in result.stdout and "max-busy-errors" in result.stdout


def test_forbid_fails_only_when_the_pattern_is_found(invoke) -> None:
    assert invoke("check", "no-busy-timeout", "-q", "--forbid", "no-busy-timeout").exit_code == 1
    assert invoke("check", "no-busy-timeout", "-q", "--forbid", "self-deadlock").exit_code == 0


def test_expect_option_replaces_the_scenarios_own_list(invoke) -> None:
    assert invoke("check", "no-busy-timeout", "-q", "--expect", "healthy").exit_code == 1
    assert invoke("check", "healthy", "-q", "--expect", "healthy").exit_code == 0


def test_check_table_sets_limits_and_the_command_line_overrides_them(invoke, tmp_path) -> None:
    path = scenario_file(tmp_path, "strict", "max_busy_errors = 0\nforbid = ['self-deadlock']")
    out = tmp_path / "r.json"
    assert invoke("check", str(path), "-q", "--json", str(out)).exit_code == 1
    thresholds = json.loads(out.read_text())["scenarios"][0]["thresholds"]
    assert thresholds == {
        "max_busy_errors": 0,
        "max_p99_wait_ms": None,
        "forbid": ["self-deadlock"],
        "expect": ["no-busy-timeout"],
    }
    assert invoke("check", str(path), "-q", "--max-busy-errors", "100").exit_code == 0


def test_limits_come_from_expect_then_check_table_then_command_line(tmp_path) -> None:
    text = NO_TIMEOUT + "\n[check]\nexpect = ['healthy']\nmax_p99_wait_ms = 50\n"
    scenario = parse_scenario(text)
    assert scenario.check == Thresholds(max_p99_wait_ms=50.0, expect=())
    assert effective_thresholds(scenario, Thresholds()) == Thresholds(
        max_p99_wait_ms=50.0, expect=()
    )
    cli = Thresholds(max_p99_wait_ms=5.0, forbid=("write-convoy",))
    assert effective_thresholds(scenario, cli) == Thresholds(
        max_p99_wait_ms=5.0, forbid=("write-convoy",), expect=()
    )
    assert effective_thresholds(parse_scenario(NO_TIMEOUT), Thresholds()).expect == (
        "no-busy-timeout",
    )


def test_a_directory_target_checks_every_toml_file_in_it(invoke, tmp_path) -> None:
    scenario_file(tmp_path, "one")
    scenario_file(tmp_path, "two", "max_busy_errors = 0")
    (tmp_path / "notes.txt").write_text("not a scenario")
    assert [s.name for s in load_targets([str(tmp_path)])] == ["one", "two"]
    out = tmp_path / "r.json"
    result = invoke("check", str(tmp_path), "-q", "--json", str(out))
    assert result.exit_code == 1
    verdicts = {s["name"]: s["passed"] for s in json.loads(out.read_text())["scenarios"]}
    assert verdicts == {"one": True, "two": False}


def test_db_option_runs_on_a_copy_and_never_writes_the_file(invoke, db: Path) -> None:
    before = snapshot(db.parent)
    result = invoke("check", "no-busy-timeout", "-q", "--db", str(db), "--json", "-")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["scenarios"][0]["database"].startswith(f"a copy of {db}")
    assert snapshot(db.parent) == before


@pytest.mark.parametrize(
    ("args", "check_table", "message"),
    [
        (["--forbid", "nope"], "", "--forbid: unknown pattern id 'nope'"),
        (["--expect", "deadlock"], "", "--expect: unknown pattern id 'deadlock'"),
        ([], "forbid = ['healthy']", "check.forbid: unknown pattern id 'healthy'"),
        ([], "max_busy_errors = 'none'", "check.max_busy_errors: expected a whole number"),
        ([], "max_p99_wait_ms = -1", "check.max_p99_wait_ms: expected a number from 0"),
        (
            [],
            "expect = 'healthy'",
            'check.expect: expected a list of pattern ids, got "healthy" (a string)',
        ),
        ([], "max_busy = 1", "check.max_busy: unknown key"),
    ],
)
def test_bad_input_exits_2_with_one_line(invoke, tmp_path, args, check_table, message) -> None:
    path = scenario_file(tmp_path, "bad", check_table)
    result = invoke("check", str(path), "-q", *args)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lockprobe: ") and message in lines[0]


@pytest.mark.parametrize("target", ["missing.toml", "empty-dir", "not-a-builtin"])
def test_a_target_that_is_not_a_scenario_exits_2(invoke, tmp_path, monkeypatch, target) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-dir").mkdir()
    result = invoke("check", target, "-q")
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1 and target in result.output


def test_db_that_does_not_exist_is_a_usage_error(invoke, tmp_path) -> None:
    result = invoke("check", "healthy", "--db", str(tmp_path / "nope.db"))
    assert result.exit_code == 2
    assert not (tmp_path / "nope.db").exists()
