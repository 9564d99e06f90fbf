"""The holder's story on real runs: a transaction left open after its COMMIT failed, a long
hold that is mostly idle vs one that is mostly a slow statement, Python 3.12's autocommit=False,
and both halves of the rollback-mode upgrade deadlock. Contention is lined up with
signal/wait steps; the durations compared are orders of magnitude apart."""

from __future__ import annotations

import sqlite3
import sys

import pytest

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.diagnose.evidence import hold_story
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import load_scenario, parse_scenario

pytestmark = pytest.mark.probe


def findings_by_pattern(text: str):
    analysis = analyze(run_scenario(parse_scenario(text)).events)
    return {f.pattern: f for f in analysis.findings}


# The writer's COMMIT fails (a reader holds SHARED) and nobody rolls back (on_error =
# "continue"): its RESERVED lock stays until the connection closes, and a later writer fails.
LEFT_OPEN = """
[database]
journal_mode = "delete"
busy_timeout_ms = 300
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, x)"]

[[group]]
name = "reader"
steps = [{ begin = "deferred" }, { read = "SELECT count(*) FROM t" }, { signal = "reading" },
         { wait = "commit-failed" }, "commit"]

[[group]]
name = "writer"
on_error = "continue"
steps = [{ wait = "reading" }, { begin = "immediate" }, { write = "INSERT INTO t (x) VALUES (1)" },
         "commit", { signal = "commit-failed" }, { wait = "done:late_writer" }]

[[group]]
name = "late_writer"
steps = [{ wait = "commit-failed" }, { begin = "immediate" },
         { write = "INSERT INTO t (x) VALUES (2)" }, "commit"]
"""


def test_transaction_left_open_after_a_failed_commit_is_told() -> None:
    found = findings_by_pattern(LEFT_OPEN)
    long_write = found["long-write-transaction"]
    [story] = [line for line in long_write.evidence if line.startswith("holder:")]
    assert "writer#0" in story
    assert "its COMMIT failed at" in story and "SQLITE_BUSY (5)" in story
    assert "never rolled back" in story and "until the connection was closed" in story
    assert long_write.facts["holds"][0]["left_open_after_failed_commit"] is True
    assert long_write.facts["holds"][0]["released_by"] == "close"
    # The failed COMMIT itself waited for the reader: that half is reader-blocks-writer's.
    assert "reader-blocks-writer" in found


# Two long holds seen by one waiter each: one sleeps inside its transaction (idle in the
# application), one runs a statement that scans millions of generated rows (inside SQLite).
SPLIT = """
[database]
journal_mode = "wal"
busy_timeout_ms = 200
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, x)"]

[[group]]
name = "{holder}"
steps = [{{ begin = "immediate" }}, {{ write = "INSERT INTO t (x) VALUES (1)" }},
         {{ signal = "locked" }}, {step}, "commit"]

[[group]]
name = "victim"
steps = [{{ wait = "locked" }}, {{ begin = "immediate" }}, "commit"]
"""
SLOW_STATEMENT = (
    '{ write = "INSERT INTO t (x) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 '
    'FROM n WHERE i < 3000000) SELECT sum(i) FROM n" }'
)


@pytest.mark.parametrize(
    ("holder", "step", "mostly"),
    [
        ("sleeper", "{ sleep = 0.5 }", "mostly idle in the application"),
        ("batch", SLOW_STATEMENT, "mostly inside SQLite statements"),
    ],
)
def test_long_hold_split_says_idle_or_slow_statement(holder: str, step: str, mostly: str) -> None:
    found = findings_by_pattern(SPLIT.format(holder=holder, step=step))
    long_write = found["long-write-transaction"]
    [hold] = long_write.facts["holds"]
    assert hold["holder_worker"] == f"{holder}#0"
    split = next(line for line in long_write.evidence if "mostly" in line)
    assert mostly in split
    if holder == "sleeper":
        assert hold["idle_ms"] > 4 * hold["in_statements_ms"]
    else:
        assert hold["in_statements_ms"] > 4 * hold["idle_ms"]


# Rollback mode, the loser does NOT roll back: it keeps SHARED, so the winner's COMMIT waits
# its whole busy_timeout and fails too.
BOTH_HALVES = """
[database]
journal_mode = "delete"
busy_timeout_ms = 300
transaction_mode = "autocommit"
schema = ["CREATE TABLE a (id INTEGER PRIMARY KEY, v INTEGER)"]

[[group]]
name = "loser"
on_error = "continue"
steps = [{ begin = "deferred" }, { read = "SELECT count(*) FROM a" }, { signal = "read" },
         { wait = "winner-wrote" }, { write = "INSERT INTO a (v) VALUES (1)" },
         { signal = "refused" }, { wait = "done:winner" }, "rollback"]

[[group]]
name = "winner"
steps = [{ wait = "read" }, { begin = "immediate" }, { write = "INSERT INTO a (v) VALUES (2)" },
         { signal = "winner-wrote" }, { wait = "refused" }, "commit"]
"""


def test_upgrade_deadlock_without_rollback_shows_both_halves_and_the_chain() -> None:
    found = findings_by_pattern(BOTH_HALVES)
    assert sorted(found) == ["upgrade-deadlock"]
    finding = found["upgrade-deadlock"]
    assert finding.facts["refused_writes"] == 1
    assert finding.facts["winner_commit_waits"] == 1
    assert finding.facts["winner_commit_failures"] == 1
    lines = "\n".join(finding.evidence)
    assert "loser: loser#0" in lines and "winner's COMMIT then: winner#0" in lines
    assert "failed with SQLITE_BUSY (5) after" in lines.split("winner's COMMIT then:")[1]
    chain = finding.facts["chain"]
    assert any("WAITS FOR: the RESERVED lock held by winner#0" in c for c in chain)
    assert any("WAITS FOR: a SHARED lock held by loser#0" in c for c in chain)
    assert chain[-1].startswith("*** CYCLE: loser#0 -> winner#0 -> loser#0")


def test_builtin_upgrade_deadlock_evidence_has_the_chain() -> None:
    analysis = analyze(run_scenario(load_scenario("upgrade-deadlock")).events)
    [finding] = analysis.findings
    assert "wait-for chain:" in finding.evidence
    assert finding.facts["chain"][0].startswith("*** (1) WAITER:")


@pytest.mark.skipif(sys.version_info < (3, 12), reason="autocommit=False is Python 3.12+")
def test_autocommit_false_transaction_is_always_open_even_after_a_select(tmp_path) -> None:
    """Recorded from a real connection: its statements show the BEGIN after each COMMIT."""
    conn = sqlite3.connect(tmp_path / "app.db", autocommit=False)  # type: ignore[call-arg]
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    events = [
        {"k": "open", "t": 0, "conn": "c1", "pid": 1, "timeout_ms": 5000, "instrumented": True}
    ]

    def call(t: int, op: str, sql: str, action) -> None:
        action()
        events.append(
            {
                "k": "call",
                "t0": t,
                "t1": t + 1_000_000,
                "conn": "c1",
                "op": op,
                "sql": sql,
                "stmts": list(traced),
                "busy": 0,
                "in_txn": conn.in_transaction,
            }
        )
        traced.clear()

    call(1_000_000, "write", "CREATE TABLE t (x)", lambda: conn.execute("CREATE TABLE t (x)"))
    call(2_000_000, "commit", "COMMIT", conn.commit)
    call(
        3_000_000,
        "read",
        "SELECT count(*) FROM t",
        lambda: conn.execute("SELECT count(*) FROM t").fetchall(),
    )
    call(900_000_000, "commit", "COMMIT", conn.commit)
    conn.close()
    timeline = build_timeline(events)
    [select_hold] = [h for h in timeline.read_holds if h.taken_by.startswith("SELECT")]
    assert select_hold.autocommit_false and select_hold.released_by == "COMMIT"
    assert select_hold.t1 == 901_000_000  # open from the SELECT until the next commit
    assert "autocommit=False" in hold_story(select_hold, timeline, 0)
