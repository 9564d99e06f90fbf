"""A SQLITE_BUSY that no lock caused is not lock contention.

A COMMIT or RELEASE while one of the connection's own writing statements is still running (an
INSERT ... RETURNING whose rows were not fetched yet, as sqlite-utils' Database.query leaves
it) fails with SQLITE_BUSY and "... - SQL statements in progress" (vdbe.c OP_AutoCommit,
OP_Savepoint). One connection, no other one: the diagnosis must stay healthy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.timeline import build_timeline

SAFETY_TIMEOUT = 120  # seconds: a hung test fails instead of hanging CI; never an assertion

# The program prints to stderr only: with --json - the report is the whole of stdout.
RELEASE_WITH_UNFETCHED_RETURNING = """
import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
conn.execute({begin!r})
cursor = conn.execute("INSERT INTO t (v) VALUES (1) RETURNING id")
try:
    conn.execute({end!r})
except sqlite3.OperationalError as exc:
    print("caught:", exc, file=sys.stderr)
print("rows:", cursor.fetchall(), file=sys.stderr)
conn.execute({end!r})
conn.close()
"""

CASES = {
    "savepoint": ("SAVEPOINT s", "RELEASE s", "cannot release savepoint"),
    "transaction": ("BEGIN", "COMMIT", "cannot commit transaction"),
}


def trace_json(tmp_path: Path, source: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`lockprobe trace --json - -- python prog.py app.db`: the report on stdout."""
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent(source).lstrip("\n"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sqlite_lockprobe",
            "trace",
            "--json",
            "-",
            "--events",
            str(tmp_path / "events.jsonl"),
            "--",
            sys.executable,
            program.name,
            "app.db",
        ],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        cwd=tmp_path,
    )
    return proc, json.loads(proc.stdout)


@pytest.mark.probe
@pytest.mark.parametrize("case", sorted(CASES))
def test_busy_from_own_unfetched_returning_is_healthy_under_trace(tmp_path, case: str) -> None:
    begin, end, message = CASES[case]
    source = RELEASE_WITH_UNFETCHED_RETURNING.format(begin=begin, end=end)
    proc, report = trace_json(tmp_path, source)
    assert proc.returncode == 0, proc.stderr
    # The program really met the BUSY and caught it, as sqlite-utils does.
    assert f"caught: {message} - SQL statements in progress" in proc.stderr
    assert report["findings"] == []
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["k"] == "call" and e["err"] == 5]
    assert [e["sql"] for e in failed] == [end]


@pytest.mark.probe
def test_the_terminal_report_says_why_its_busy_error_is_no_lock_problem(tmp_path) -> None:
    begin, end, _ = CASES["savepoint"]
    program = tmp_path / "prog.py"
    program.write_text(
        textwrap.dedent(RELEASE_WITH_UNFETCHED_RETURNING.format(begin=begin, end=end))
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sqlite_lockprobe",
            "trace",
            "--",
            sys.executable,
            "prog.py",
            "app.db",
        ],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Diagnosis: no lock problems found" in proc.stdout
    assert (
        "1 call failed with SQLITE_BUSY because of its own connection's unfinished" in proc.stdout
    )


def own_statements_events(timeout_ms: int = 5000) -> list[dict[str, Any]]:
    """The savepoint program's events as the probe records them: one connection."""

    def call(t0: int, sql: str, in_txn: bool, **failure: Any) -> dict[str, Any]:
        return {
            "k": "call",
            "t0": t0,
            "t1": t0 + 10_000,
            "conn": "c1",
            "worker": "MainThread",
            "thread": 1,
            "task": None,
            "op": "execute",
            "sql": sql,
            "stmts": [sql],
            "busy": 0,
            "err": None,
            "ext": None,
            "msg": None,
            "in_txn": in_txn,
            "site": "prog.py:5 <module>",
            **failure,
        }

    busy = {"err": 5, "ext": 5, "msg": "cannot release savepoint - SQL statements in progress"}
    return [
        {"k": "meta", "t": 0, "pid": 1, "source": "trace python prog.py", "journal_mode": None},
        {"k": "open", "t": 1, "conn": "c1", "worker": "MainThread", "group": "", "pid": 1,
         "timeout_ms": timeout_ms, "isolation": None, "instrumented": True},
        call(100_000, "SAVEPOINT s", True),
        call(200_000, "INSERT INTO t (v) VALUES (1) RETURNING id", True),
        call(300_000, "RELEASE s", True, **busy),
        call(400_000, "RELEASE s", False),
        {"k": "close", "t": 500_000, "conn": "c1"},
    ]  # fmt: skip


@pytest.mark.parametrize("timeout_ms", [5000, 0])
def test_release_failing_on_own_statements_is_no_busy_wait_and_no_finding(timeout_ms) -> None:
    # With busy_timeout 0 no-busy-timeout would claim any BUSY: this one is not about a lock.
    timeline = build_timeline(own_statements_events(timeout_ms))
    [failed] = [c for c in timeline.calls if c.error == 5]
    assert failed.busy_from_own_statements and not failed.failed_busy
    assert timeline.waits == ()
    assert diagnose(timeline) == []


def test_the_summary_still_counts_the_busy_error_the_program_met() -> None:
    analysis = analyze(own_statements_events())
    assert analysis.findings == []
    assert analysis.summary.total.busy_errors == 1
