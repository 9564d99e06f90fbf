"""external-holder: the detector on hand-built timelines, then end to end: a real process
outside the run (started by the test, never traced) holds the lock while the run's writers
wait and fail; the report names that process. The end-to-end tests are marked `probe`."""

from __future__ import annotations

import json
import os

import pytest

from sqlite_lockprobe.diagnose import external_holder, no_busy_timeout
from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.events.records import write_events
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import parse_scenario

from .builders import TimelineBuilder


def test_outside_pid_holding_reserved_while_nobody_recorded_holds_is_named():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000)
    wait = tl.wait(w, 0, 1000, failed=True, handler_calls=20)
    tl.os_sample(wait, 8, (100, "SHARED"), (4242, "RESERVED"))
    tl.os_sample(wait, 1008, (4242, "RESERVED"))
    [f] = external_holder.detect(tl.build())
    assert f.pattern == "external-holder"
    assert f.severity == "error" and f.confidence == "high"
    holder = f.facts["holder"]
    assert holder["pid"] == 4242 and holder["locks"] == ["RESERVED"]
    assert holder["name"] == "sqlite3" and holder["cmdline"] == ["sqlite3", "app.db"]
    assert holder["first_seen_ms"] == 8.0 and holder["last_seen_ms"] == 1008.0
    assert holder["samples"] == 2
    assert f.evidence[0].startswith(
        "pid 4242 (sqlite3, user alice): `sqlite3 app.db` held RESERVED"
    )


def test_a_recorded_process_pid_is_one_of_ours_never_an_outsider():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000, pid=100)
    tl.conn("other-process", pid=200)
    wait = tl.wait(w, 0, 1000, failed=True)
    tl.os_sample(wait, 8, (200, "RESERVED"))
    assert external_holder.detect(tl.build()) == []


def test_no_blame_while_a_recorded_connection_held_the_write_lock():
    tl = TimelineBuilder()
    a, w = tl.conn("a"), tl.conn("w", timeout_ms=1000)
    tl.write_hold(a, 0, 2000)
    wait = tl.wait(w, 10, 1010, failed=True)
    tl.os_sample(wait, 18, (4242, "RESERVED"))  # a stale or odd sample: ours explains it
    assert external_holder.detect(tl.build()) == []


def test_outside_shared_lock_blocks_a_rollback_commit_with_medium_confidence():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000)
    wait = tl.wait(w, 0, 1000, failed=True, phase="commit")
    tl.os_sample(wait, 8, (4242, "SHARED"))
    [f] = external_holder.detect(tl.build())
    assert f.confidence == "medium" and f.facts["holder"]["locks"] == ["SHARED"]
    assert any("it held only SHARED" in line for line in f.evidence)


def test_outside_shared_lock_does_not_block_a_reader_or_a_wal_writer():
    for journal, phase in (("delete", "read"), ("wal", "write")):
        tl = TimelineBuilder(journal_mode=journal)
        w = tl.conn("w", timeout_ms=1000)
        wait = tl.wait(w, 0, 1000, failed=True, phase=phase)
        tl.os_sample(wait, 8, (4242, "SHARED"))
        assert external_holder.detect(tl.build()) == []


def test_wal_write_lock_of_an_outside_process_is_named():
    tl = TimelineBuilder(journal_mode="wal")
    w = tl.conn("w", timeout_ms=1000)
    wait = tl.wait(w, 0, 400, handler_calls=12)  # a long wait that succeeded
    tl.os_sample(wait, 8, (4242, "WAL_WRITE_LOCK"), (4242, "WAL_READ_LOCK(0)"))
    [f] = external_holder.detect(tl.build())
    assert f.severity == "warning" and f.facts["holder"]["locks"] == ["WAL_WRITE_LOCK"]
    assert "-shm" in f.evidence[0]


def test_external_holder_takes_precedence_over_no_busy_timeout():
    """busy_timeout 0 and an outsider: the report names the outsider once, not both."""
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=0)
    wait = tl.wait(w, 0, 0.1, failed=True, handler_calls=0, phase="begin")
    tl.os_sample(wait, 0.2, (4242, "RESERVED"))  # the probe looks right after the failure
    timeline = tl.build()
    assert no_busy_timeout.detect(timeline) == []
    assert [f.pattern for f in diagnose(timeline)] == ["external-holder"]


def test_one_finding_per_outside_process():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000)
    first = tl.wait(w, 0, 1000, failed=True)
    second = tl.wait(w, 2000, 3000, failed=True)
    tl.os_sample(first, 8, (4242, "RESERVED"))
    tl.os_sample(second, 2008, (5151, "EXCLUSIVE"))
    findings = external_holder.detect(tl.build())
    assert [f.facts["holder"]["pid"] for f in findings] == [4242, 5151]


# ------------------------------------------------------------ end to end


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


@pytest.mark.probe
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


@pytest.mark.probe
def test_recorded_process_is_never_blamed(holder) -> None:
    """The run's own thread writers hold locks under lockprobe's pid: one of ours."""
    result = run_scenario(parse_scenario(WRITERS.format(mode="delete")))
    samples = [e for e in result.events if e["k"] == "holders"]
    analysis = analyze(result.events)
    assert "external-holder" not in analysis.pattern_ids
    for sample in samples:
        assert {lock["pid"] for lock in sample["locks"]} <= {os.getpid()}


@pytest.mark.probe
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
