"""external-holder end to end: a real process outside the run (started by the test, never
traced) holds the lock while the run's writers wait and fail; the report names that process."""

from __future__ import annotations

import json
import os

import pytest

from sqlite_lockprobe.analysis import analyze
from sqlite_lockprobe.events import write_events
from sqlite_lockprobe.runner import run_scenario
from sqlite_lockprobe.scenario import parse_scenario

pytestmark = pytest.mark.probe

# Thread writers with a short busy_timeout: long enough for the probe to look (it reads the OS
# lock table from the busy handler's retry 3, after 8 ms of waiting), short enough to fail soon.
WRITERS = """
[database]
journal_mode = "{mode}"
busy_timeout_ms = 300
transaction_mode = "immediate"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, x)"]

[[group]]
name = "writer"
kind = "thread"
count = 2
repeat = 2
steps = [{{ write = "INSERT INTO t (x) VALUES (:worker)" }}, "commit"]
"""


def run_with_outside_holder(holder, mode: str, holder_mode: str):
    outside = []

    def attach(db) -> None:
        outside.append(holder(db, holder_mode))  # returns once it printed "ready"

    result = run_scenario(parse_scenario(WRITERS.format(mode=mode)), on_prepared=attach)
    return outside[0], analyze(result.events)


@pytest.mark.parametrize(
    ("journal_mode", "holder_mode", "lock"),
    [("delete", "reserved", "RESERVED"), ("wal", "wal-writer", "WAL_WRITE_LOCK")],
)
def test_outside_process_holding_the_write_lock_is_named(
    holder, journal_mode, holder_mode, lock
) -> None:
    outside, analysis = run_with_outside_holder(holder, journal_mode, holder_mode)
    assert analysis.pattern_ids == ["external-holder"]
    finding = analysis.findings[0]
    facts = finding.facts["holder"]
    assert facts["pid"] == outside.pid != os.getpid()
    assert facts["locks"] == [lock]
    assert facts["cmdline"] == list(outside.proc.args)
    assert facts["name"] and facts["user"]
    assert finding.severity == "error" and finding.confidence == "high"
    assert finding.facts["failed"] == 4  # every write of both writers timed out
    first_line = finding.evidence[0]
    assert f"pid {outside.pid}" in first_line and f"held {lock}" in first_line
    assert "?mode=ro" in " ".join(a.text for a in finding.advice)


def test_recorded_process_is_never_blamed(holder) -> None:
    """The run's own thread writers hold locks under lockprobe's pid: one of ours."""
    result = run_scenario(parse_scenario(WRITERS.format(mode="delete")))
    samples = [e for e in result.events if e["k"] == "holders"]
    analysis = analyze(result.events)
    assert "external-holder" not in analysis.pattern_ids
    for sample in samples:
        assert {lock["pid"] for lock in sample["locks"]} <= {os.getpid()}


def test_saved_event_log_reports_the_outsider_through_the_cli(holder, invoke, tmp_path) -> None:
    """The readings are events: `report` on the saved log names the same holder, and
    --expect accepts the new pattern id."""
    outside = []
    result = run_scenario(
        parse_scenario(WRITERS.format(mode="delete")),
        on_prepared=lambda db: outside.append(holder(db, "reserved")),
    )
    log = tmp_path / "events.jsonl"
    write_events(log, result.events)
    out = tmp_path / "report.json"
    cli = invoke("report", str(log), "-q", "--json", str(out), "--expect", "external-holder")
    assert cli.exit_code == 0, cli.output
    [finding] = json.loads(out.read_text())["findings"]
    assert finding["pattern"] == "external-holder"
    assert finding["evidence"]["holder"]["pid"] == outside[0].pid
    assert finding["evidence"]["holder"]["locks"] == ["RESERVED"]
