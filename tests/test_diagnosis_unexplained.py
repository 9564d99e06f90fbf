"""The real CLI never prints "no lock problems found" for a log with a BUSY failure nobody
explains: `lockprobe report` on a saved event log names it `unexplained-busy`, which every
list of pattern ids accepts (--expect, trace --fail-on, check's thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlite_lockprobe.diagnose.registry import PRECEDENCE
from sqlite_lockprobe.events.records import write_events

from .diagnose.eventlog import EventLog


def lone_failure_log(tmp_path: Path) -> Path:
    """One writer ran out of its 200 ms busy_timeout; no recorded connection held a lock."""
    log = EventLog()
    log.open("a", timeout_ms=200)
    log.call("a", 0, 1, "SELECT 1", in_txn=False)
    retries = [(10 + 20 * i, 20) for i in range(10)] + [(210, 0)]
    log.call("a", 10, 210, "INSERT INTO jobs VALUES (1)", in_txn=False, failed=True, busy=retries)
    log.close("a", 220)
    path = tmp_path / "events.jsonl"
    write_events(path, log.merged())
    return path


def test_report_names_an_unexplained_failure_instead_of_saying_all_is_well(
    invoke, tmp_path
) -> None:
    events = lone_failure_log(tmp_path)
    out = tmp_path / "report.json"
    result = invoke("report", str(events), "--json", str(out), "--expect", "unexplained-busy")
    assert result.exit_code == 0, result.output
    assert "no lock problems found" not in result.output
    assert "unexplained-busy" in result.output
    [finding] = json.loads(out.read_text())["findings"]
    assert (finding["pattern"], finding["severity"], finding["confidence"]) == (
        "unexplained-busy",
        "error",
        "low",
    )
    assert finding["evidence"]["failed"] == 1


def test_unexplained_busy_is_a_known_pattern_id_everywhere(invoke, tmp_path) -> None:
    assert "unexplained-busy" in PRECEDENCE
    result = invoke("report", str(lone_failure_log(tmp_path)), "-q", "--expect", "healthy")
    assert result.exit_code == 1
    assert "found ['unexplained-busy']" in result.output
