"""--compare-fix: the automatic advice is applied to the scenario and verified by a re-run."""

from __future__ import annotations

import json

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.sources.run.scenario import load_scenario
from sqlite_lockprobe.workflows.comparefix import apply_fixes, fixes_from


def _finding(*items) -> Finding:
    return Finding("p", "t", "error", "high", "e", ("line",), tuple(items))


def test_fixes_merge_and_the_longest_busy_timeout_wins() -> None:
    findings = [
        _finding(advice.busy_timeout(5000), advice.short_transactions()),
        _finding(advice.raise_busy_timeout_stopgap(10000), advice.wal_mode()),
        _finding(advice.begin_immediate()),
    ]
    assert fixes_from(findings) == {
        "busy_timeout_ms": 10000,
        "journal_mode": "wal",
        "synchronous": "normal",
        "transaction": "immediate",
    }


def test_every_automatic_advice_carries_the_fix_it_applies() -> None:
    for made in (
        advice.begin_immediate(),
        advice.busy_timeout(),
        advice.wal_mode(),
        advice.synchronous_normal(),
        advice.raise_busy_timeout_stopgap(9000),
    ):
        assert made.automatic and made.fix
    for made in (advice.short_transactions(), advice.single_writer(), advice.short_readers()):
        assert not made.automatic and not made.fix


def test_begin_immediate_rewrites_deferred_begins_and_legacy_mode() -> None:
    scenario = load_scenario("upgrade-deadlock")
    fixed = apply_fixes(scenario, {"transaction": "immediate", "busy_timeout_ms": 9000})
    begins = {s.mode for g in fixed.groups for s in g.steps if s.action == "begin"}
    assert begins == {"immediate"}
    assert fixed.database.busy_timeout_ms == 9000
    legacy = apply_fixes(load_scenario("aiosqlite-convoy"), {"transaction": "immediate"})
    assert legacy.database.transaction_mode == "immediate"


def _compare(invoke, name: str, tmp_path) -> dict:
    out = tmp_path / "report.json"
    result = invoke("run", name, "-q", "--compare-fix", "--json", str(out))
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["compare_fix"]


def test_begin_immediate_is_verified_to_remove_the_upgrade_deadlock(invoke, tmp_path) -> None:
    comparison = _compare(invoke, "upgrade-deadlock", tmp_path)
    assert comparison["fixes"]["transaction"] == "immediate"
    assert comparison["before"]["patterns"] == ["upgrade-deadlock"]
    assert comparison["before"]["busy_errors"] > 0
    assert comparison["after"]["patterns"] == [] and comparison["after"]["busy_errors"] == 0


def test_wal_is_verified_to_remove_reader_blocks_writer(invoke, tmp_path) -> None:
    comparison = _compare(invoke, "rollback-readers", tmp_path)
    assert comparison["fixes"] == {"journal_mode": "wal", "synchronous": "normal"}
    assert comparison["after"]["patterns"] == [] and comparison["after"]["commits"] == 2


def test_advice_that_needs_code_changes_is_listed_not_rerun(invoke, tmp_path) -> None:
    comparison = _compare(invoke, "fastapi-self-deadlock", tmp_path)
    assert comparison["after"] is None and comparison["fixes"] == {}
    assert {m["pattern"] for m in comparison["manual"]} == {"self-deadlock"}


def test_advice_says_it_is_verified_only_when_compare_fix_ran(invoke, tmp_path) -> None:
    # It said "[verified by --compare-fix]" after every automatic advice, even under `trace`
    # and `report`, where no re-run can happen.
    def text(*args: str) -> str:  # the panels' words, whatever the terminal's width
        return " ".join(invoke(*args).output.replace("│", " ").split())

    events = tmp_path / "events.jsonl"
    plain = text("run", "upgrade-deadlock", "--events", str(events))
    assert "verified by" not in plain
    assert "[--compare-fix re-runs the scenario with this change to verify it]" in plain
    compared = text("run", "upgrade-deadlock", "--compare-fix")
    assert "[re-run with this change by --compare-fix: results below]" in compared
    replayed = text("report", str(events))
    assert "upgrade-deadlock" in replayed and "compare-fix" not in replayed
