"""The compiled trace hook (_speedups.StatementList): what it keeps, around a program's own
trace callback, across threads sharing a connection, and when the connection or the list goes
first. In-process, through the recorder (the same Tracer as `trace`)."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import sqlite_lockprobe
from sqlite_lockprobe.probe.capi import ConnectionProbe, compiled_speedups

pytestmark = pytest.mark.probe


@pytest.fixture(scope="module", autouse=True)
def compiled_hook() -> None:
    speedups = compiled_speedups()
    if speedups is None or not hasattr(speedups, "StatementList"):
        why = "the compiled trace hook is not built for this Python (or LOCKPROBE_PURE_PYTHON=1)"
        if os.environ.get("LOCKPROBE_REQUIRE_SPEEDUPS") == "1" and not os.environ.get(
            "LOCKPROBE_PURE_PYTHON"
        ):
            pytest.fail(f"{why} (LOCKPROBE_REQUIRE_SPEEDUPS=1)")
        pytest.skip(why)


def calls(recorder: Any) -> list[dict[str, Any]]:
    return [e for e in recorder.events() if e["k"] == "call"]


def test_statements_are_kept_before_during_and_after_a_programs_own_trace_callback(
    tmp_path: Path,
) -> None:
    seen: list[str] = []
    with sqlite_lockprobe.record() as recorder:
        conn = sqlite3.connect(tmp_path / "app.db")
        state = conn._lockprobe  # type: ignore[attr-defined]
        assert type(state.statements).__name__ == "StatementList"
        conn.executescript("SELECT 1; SELECT 2;")
        conn.set_trace_callback(seen.append)  # sqlite3's hook now: it feeds both
        conn.executescript("SELECT 3; SELECT 4;")
        conn.set_trace_callback(None)  # the compiled hook again
        conn.executescript("SELECT 5; SELECT 6;")
        conn.close()
    assert seen == ["SELECT 3;", " SELECT 4;"]
    scripts = [c for c in calls(recorder) if c["op"] == "executescript"]
    assert [tuple(c["stmts"]) for c in scripts] == [
        ("SELECT 1;", " SELECT 2;"),
        ("SELECT 3;", " SELECT 4;"),
        ("SELECT 5;", " SELECT 6;"),
    ]


def test_parameter_values_are_not_kept(tmp_path: Path) -> None:
    with sqlite_lockprobe.record() as recorder:
        conn = sqlite3.connect(tmp_path / "app.db")
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("s3cret-value",))  # implicit BEGIN too
        conn.commit()
        conn.close()
    (insert,) = [c for c in calls(recorder) if c["sql"].startswith("INSERT")]
    assert tuple(insert["stmts"]) == ("BEGIN ", "INSERT INTO t (v) VALUES (?)")
    assert "s3cret" not in repr(recorder.events())


def test_threads_sharing_one_connection_lose_no_call(tmp_path: Path) -> None:
    threads, each = 4, 300
    start = threading.Barrier(threads)
    # One SQL text per thread: CPython 3.12+ may hand one cached prepared statement to two
    # threads running the same text on a shared connection, and SQLite then fails one with
    # SQLITE_MISUSE ("bad parameter or other API misuse"), lockprobe or not.
    texts = [f"INSERT INTO t (v) VALUES (?) -- thread {n}" for n in range(threads)]
    with sqlite_lockprobe.record() as recorder:
        conn = sqlite3.connect(tmp_path / "app.db", check_same_thread=False, isolation_level=None)
        conn.execute("CREATE TABLE t (v INTEGER)")

        def work(sql: str) -> None:
            start.wait()
            for i in range(each):
                conn.execute(sql, (i,))

        workers = [threading.Thread(target=work, args=(sql,)) for sql in texts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        conn.close()
    inserts = [c for c in calls(recorder) if c["sql"].startswith("INSERT")]
    assert rows == threads * each
    assert Counter(c["sql"] for c in inserts) == {sql: each for sql in texts}
    # Every statement SQLite ran was reported once: none lost, none twice. (Which call ran a
    # statement is not known from the hook alone: calls made at once on one connection may
    # show each other's, and a call that took one statement reports its own SQL.)
    listed = [s for c in inserts if c["stmts"] is not None for s in c["stmts"]]
    alone = [c for c in inserts if c["stmts"] is None]
    assert set(listed) <= set(texts)
    assert len(listed) + len(alone) == threads * each


def test_the_connection_or_the_list_may_go_first(tmp_path: Path) -> None:
    """SQLite tells the hook when a connection closes; the list may be freed first (a
    connection dropped without close). Neither order leaves a hook writing freed memory."""
    events: list[Any] = []
    for order in ("close first", "list first"):
        conn = sqlite3.connect(tmp_path / "app.db")
        probe = ConnectionProbe(conn, "c1", events.append)
        statements = probe.statements
        conn.execute("SELECT 1")
        assert len(statements) == 1 and statements[0] == "SELECT 1"
        if order == "close first":
            conn.close()
            assert list(statements) == ["SELECT 1"]  # still readable
            del probe, statements
        else:
            probe.statements = []
            del probe, statements
            gc.collect()
            conn.execute("SELECT 2")  # the hook still registered: it keeps nothing now
            conn.close()
        gc.collect()
    other = sqlite3.connect(tmp_path / "app.db")
    assert other.execute("SELECT 3").fetchone() == (3,)
    other.close()
