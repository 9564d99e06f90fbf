"""The run engine end to end: real threads, processes and coroutines on real database files,
contention made deterministic with the scenarios' own signal/wait steps."""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.events.records import event_time, load_event_log
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import load_scenario, parse_scenario

pytestmark = pytest.mark.probe


def _calls(events: list[dict], group: str) -> list[dict]:
    return [e for e in events if e["k"] == "call" and e["worker"].startswith(f"{group}#")]


def test_django_seed_deferred_view_gets_busy_and_immediate_view_never_does() -> None:
    result = run_scenario(load_scenario("upgrade-deadlock"))
    deferred = _calls(result.events, "read_write_transaction")
    immediate = _calls(result.events, "read_write_transaction_immediate")
    busy_deferred = [c for c in deferred if c["err"] == 5]
    assert busy_deferred, "the first deferred pass is forced to overlap a writer"
    # The upgrade signature: SQLite refused to wait (no busy-handler call) on the write.
    assert all(c["busy"] == 0 and c["op"] == "write" for c in busy_deferred)
    assert not [c for c in immediate if c["err"] is not None]
    assert {c["stmts"][0] for c in immediate if c["op"] == "begin"} == {"BEGIN IMMEDIATE"}


def test_probe_sees_busy_handler_calls_during_plain_contention() -> None:
    result = run_scenario(load_scenario("process-long-write"))
    waits = [c for c in _calls(result.events, "workers") if c["busy"]]
    assert waits and all(c["busy"] > 1 for c in waits if c["err"] == 5)
    busy_events = [e for e in result.events if e["k"] == "busy"]
    assert len(busy_events) == sum(c["busy"] for c in _calls(result.events, "workers"))


def test_events_of_several_processes_merge_in_time_order() -> None:
    result = run_scenario(load_scenario("process-long-write"))
    times = [event_time(e) for e in result.events]
    assert times == sorted(times)
    pids = {e["pid"] for e in result.events if e["k"] == "worker"}
    assert len(pids) == 5 and os.getpid() not in pids
    # Each process's connection calls are attributed to that process's connections.
    conn_pid = {e["conn"]: e["pid"] for e in result.events if e["k"] == "open"}
    assert {conn_pid[c["conn"]] for c in _calls(result.events, "workers")} <= pids


SCENARIO = """
[database]
journal_mode = "wal"
busy_timeout_ms = 2000
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, worker INTEGER, it INTEGER)"]

[[group]]
name = "g"
kind = "{kind}"
count = 3
repeat = 4
connection = "{connection}"
{extra}
steps = [{{ begin = "immediate" }}, {{ write = "INSERT INTO t (worker, it) VALUES (:worker, :iteration)" }}, "commit"]
"""


@pytest.mark.parametrize(
    ("kind", "connection", "extra", "opens"),
    [
        ("thread", "per-worker", "", 3),
        ("thread", "per-iteration", "", 12),
        ("thread", "shared", "", 1),
        ("process", "per-worker", "", 3),
        ("coroutine", "per-worker", "", 3),
        ("coroutine", "per-iteration", "blocking = false", 12),
        ("coroutine", "shared", "blocking = false", 1),
    ],
)
def test_every_commit_reported_is_in_the_database_and_connections_are_closed(
    tmp_path: Path, kind: str, connection: str, extra: str, opens: int
) -> None:
    text = SCENARIO.format(kind=kind, connection=connection, extra=extra)
    if connection == "shared":
        # Workers sharing one connection share its transaction: SQLite refuses a BEGIN
        # inside an open one, so code that shares a connection writes in autocommit.
        text = text.replace('{ begin = "immediate" }, ', "").replace(', "commit"]', "]")
    db = tmp_path / "kept.db"
    result = run_scenario(parse_scenario(text), db=db)
    kinds = Counter(e["k"] for e in result.events)
    assert kinds["open"] == kinds["close"] == opens
    rows = sqlite3.connect(db).execute("SELECT worker, it FROM t ORDER BY 1, 2").fetchall()
    assert rows == [(w, i) for w in range(3) for i in range(4)]
    assert not [c for c in result.events if c["k"] == "call" and c["err"] is not None]
    assert analyze(result.events).summary.total.commits == len(rows)


def test_coroutines_close_their_connections_when_a_step_fails(tmp_path: Path) -> None:
    text = SCENARIO.format(kind="coroutine", connection="per-iteration", extra='on_error = "stop"')
    text = text.replace("busy_timeout_ms = 2000", "busy_timeout_ms = 0").replace(
        "count = 3", "count = 20"
    )
    result = run_scenario(parse_scenario(text))
    kinds = Counter(e["k"] for e in result.events)
    assert kinds["open"] == kinds["close"]


def test_an_existing_database_is_copied_and_never_modified(tmp_path: Path) -> None:
    original = tmp_path / "app.db"
    conn = sqlite3.connect(original)
    conn.execute("CREATE TABLE keep (x)")
    conn.execute("INSERT INTO keep VALUES ('mine')")
    conn.commit()
    conn.close()
    before = (original.read_bytes(), original.stat().st_mtime_ns)
    text = SCENARIO.format(kind="thread", connection="per-worker", extra="")
    result = run_scenario(parse_scenario(text), db=original)
    assert "a copy of" in result.db_note
    assert (original.read_bytes(), original.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_without_the_probe_the_upgrade_deadlock_is_still_found_with_reduced_confidence() -> None:
    result = run_scenario(load_scenario("upgrade-deadlock"), instrument=False)
    analysis = analyze(result.events)
    assert analysis.pattern_ids == ["upgrade-deadlock"]
    assert analysis.findings[0].confidence == "medium"
    assert any("reduced detail" in note for note in analysis.summary.notes)


def test_saved_event_log_gives_the_same_report(tmp_path: Path, invoke) -> None:
    events = tmp_path / "events.jsonl"
    first = tmp_path / "run.json"
    second = tmp_path / "report.json"
    assert (
        invoke(
            "run", "fastapi-self-deadlock", "-q", "--events", str(events), "--json", str(first)
        ).exit_code
        == 0
    )
    assert invoke("report", str(events), "--json", str(second)).exit_code == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["findings"] == b["findings"] and [f["pattern"] for f in a["findings"]] == [
        "self-deadlock"
    ]
    assert len(load_event_log(events)) == sum(1 for _ in events.open())
