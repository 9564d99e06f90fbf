"""Every built-in scenario reproduces its real report: the diagnosis names exactly the
patterns in its `expect` list, no missing one and no extra one (healthy: none)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sqlite_lockprobe.sources.run.scenario import builtin_names, load_scenario

pytestmark = pytest.mark.probe

REQUIRED_FINDING_KEYS = {"pattern", "severity", "confidence", "evidence", "advice"}


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_scenario_names_exactly_its_expected_patterns(name: str, invoke, tmp_path) -> None:
    expect = load_scenario(name).expect or ()
    out = tmp_path / "report.json"
    args = ["run", name, "-q", "--json", str(out)] + [
        f"--expect={p}" for p in expect or ("healthy",)
    ]
    result = invoke(*args)
    report = json.loads(out.read_text())
    found = sorted(f["pattern"] for f in report["findings"])
    evidence = {f["pattern"]: f["evidence"]["lines"] for f in report["findings"]}
    assert found == sorted(expect), json.dumps(evidence, indent=1)
    assert result.exit_code == 0, result.output
    assert report["schema_version"] == 1 and report["command"] == "run"
    assert report["summary"]["total"]["crashes"] == []
    for finding in report["findings"]:
        assert set(finding) >= REQUIRED_FINDING_KEYS
        assert finding["evidence"]["lines"] and finding["advice"]
        assert_deadlocks_are_real(finding["evidence"].get("chain") or [])


def assert_deadlocks_are_real(chain: list[str]) -> None:
    """A wait-for chain calls a cycle a deadlock only when every wait in it failed (the
    default scenario used to print a CYCLE through a COMMIT and a SELECT that succeeded)."""
    if any(line.startswith("*** CYCLE") for line in chain):
        outcomes = [chain[i + 1] for i, line in enumerate(chain) if ") WAITER: " in line]
        assert outcomes and all("failed with" in o for o in outcomes), "\n".join(chain)


def test_expect_fails_the_run_when_findings_differ(invoke) -> None:
    result = invoke("run", "no-busy-timeout", "-q", "--expect", "healthy")
    assert result.exit_code == 1
    assert "expected patterns ['healthy'], found ['no-busy-timeout']" in result.output


def test_default_command_prints_the_report_with_the_diagnosis() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for text in (
        "upgrade-deadlock",
        "read_write_transaction",
        "BUSY",
        "BEGIN IMMEDIATE",
        "Diagnosis",
    ):
        assert text in proc.stdout


def test_json_to_stdout_is_only_json(invoke) -> None:
    result = invoke("run", "healthy", "--json", "-")
    report = json.loads(result.stdout)
    assert report["findings"] == []
    assert report["summary"]["total"]["commits"] == 4 * 200 + 2 * 100


def test_scenarios_command_lists_every_builtin(invoke) -> None:
    result = invoke("scenarios")
    for name in builtin_names():
        assert name in result.output
