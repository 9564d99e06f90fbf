"""What the run engine records for each call it makes: every field of the `call` events read
back from its compact per-process records, with and without the probe, on real databases."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from sqlite_lockprobe.events.eventfile import EventFile, read_event_file
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import parse_scenario
from sqlite_lockprobe.sources.run.workers.session import ConnectionSpec, Session
from tests.statements import same_statements

pytestmark = pytest.mark.probe

LEGACY_TRANSACTIONS = """
[database]
journal_mode = "wal"
transaction_mode = "deferred"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"]

[[group]]
name = "g"
repeat = 2
steps = [
  { write = "INSERT INTO t (v) VALUES (:iteration)" },
  { read = "SELECT count(*) FROM t" },
  { open_read = "SELECT v FROM t" },
  { close_reads = true },
  "commit",
]
"""


@pytest.mark.parametrize("instrument", [True, False])
def test_each_call_is_recorded_with_what_sqlite_ran_and_the_state_after_it(
    instrument: bool,
) -> None:
    result = run_scenario(parse_scenario(LEGACY_TRANSACTIONS), instrument=instrument)
    (worker,) = [e for e in result.events if e["k"] == "worker"]
    (opened,) = [e for e in result.events if e["k"] == "open"]
    calls = [e for e in result.events if e["k"] == "call"]
    insert, count = "INSERT INTO t (v) VALUES (:iteration)", "SELECT count(*) FROM t"
    assert [(c["op"], c["sql"], c["in_txn"]) for c in calls] == 2 * [
        ("write", insert, True),
        ("read", count, True),
        ("open_read", "SELECT v FROM t", True),
        ("close_read", "SELECT v FROM t", True),
        ("commit", "COMMIT", False),
    ]
    for c in calls:
        assert (c["conn"], c["worker"], c["thread"], c["task"]) == (
            opened["conn"],
            "g#0",
            worker["thread"],
            None,
        )
        assert c["t0"] <= c["t1"] and (c["err"], c["ext"], c["msg"], c["site"]) == (None,) * 4
    if not instrument:
        assert all(tuple(c["stmts"]) == () and c["busy"] is None for c in calls)
        return
    assert all(c["busy"] == 0 for c in calls)
    # Python's implicit BEGIN comes first; the trace gives the INSERT with its value.
    stmts = [tuple(c["stmts"]) for c in calls]
    assert same_statements(stmts[0], ("BEGIN DEFERRED", "INSERT INTO t (v) VALUES (0)"))
    assert same_statements(stmts[5], ("BEGIN DEFERRED", "INSERT INTO t (v) VALUES (1)"))
    assert stmts[1:5] == [(count,), ("SELECT v FROM t",), (), ("COMMIT",)]


def test_ops_counted_per_worker_are_its_recorded_calls() -> None:
    result = run_scenario(parse_scenario(LEGACY_TRANSACTIONS.replace("repeat = 2", "repeat = 3")))
    calls = Counter(e["worker"] for e in result.events if e["k"] == "call")
    ends = {e["worker"]: e["ops"] for e in result.events if e["k"] == "worker_end"}
    assert ends == {"g#0": 15} and calls == Counter(ends)


def test_a_refusal_that_ends_a_run_counts_the_calls_made_up_to_it(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode = wal")
    holder.execute("CREATE TABLE t (v INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock throughout
    recorded: list[tuple] = []
    spec = ConnectionSpec(str(db), "g", 0, "autocommit", "wal")
    session = Session(spec, recorded.append, "g#0")
    calls = (
        ("read", "SELECT count(*) FROM t", False),
        ("begin", "BEGIN IMMEDIATE", False),
        ("write", "INSERT INTO t VALUES (1)", False),
    )
    assert session.prepare("g#0", None, calls, (), True).make() == (2, False)
    assert session.prepare("g#0", None, calls, (), False).make() == (3, True)
    session.close()
    holder.rollback()
    refused = [r for r in recorded if r[0] == "call"]
    assert [(r[7], r[11]) for r in refused] == [("begin", 5), ("begin", 5), ("write", 5)]


RETURNING = """
[database]
journal_mode = "wal"
busy_timeout_ms = 0
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"]

[[group]]
name = "returning"
steps = [
  { write = "INSERT INTO t (v) VALUES (1), (2), (3) RETURNING id" },
  { signal = "inserted" },
  { wait = "other-wrote" },
]

[[group]]
name = "other"
on_error = "continue"
steps = [
  { wait = "inserted" },
  { write = "INSERT INTO t (v) VALUES (4)" },
  { signal = "other-wrote" },
]
"""


def test_a_write_that_returns_rows_is_run_to_its_end_and_holds_no_lock_after(
    tmp_path: Path,
) -> None:
    # In autocommit, an INSERT ... RETURNING left with rows to read keeps its write
    # transaction open: the other writer, which does not wait (busy_timeout 0), would fail.
    db = tmp_path / "r.db"
    result = run_scenario(parse_scenario(RETURNING), db=db)
    calls = [e for e in result.events if e["k"] == "call"]
    assert [(c["worker"], c["err"], c["in_txn"]) for c in calls] == [
        ("returning#0", None, False),
        ("other#0", None, False),
    ]
    assert sqlite3.connect(db).execute("SELECT count(*) FROM t").fetchone() == (4,)


FOLLOWED_TIMEOUT = """
[database]
journal_mode = "wal"
busy_timeout_ms = 5000
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (v INTEGER)"]

[[group]]
name = "holder"
steps = [
  { begin = "immediate" },
  { write = "INSERT INTO t VALUES (1)" },
  { signal = "held" },
  { wait = "gave-up" },
  "commit",
]

[[group]]
name = "waiter"
on_error = "continue"
steps = [
  { wait = "held" },
  { write = "PRAGMA busy_timeout = 40" },
  { write = "INSERT INTO t VALUES (2)" },
  { signal = "gave-up" },
]
"""


def test_a_busy_timeout_set_by_a_step_is_kept_by_the_probe() -> None:
    result = run_scenario(parse_scenario(FOLLOWED_TIMEOUT))
    (refused,) = [e for e in result.events if e["k"] == "call" and e["err"] is not None]
    assert (refused["worker"], refused["err"]) == ("waiter#0", 5)
    waits = [e for e in result.events if e["k"] == "busy" and e["conn"] == refused["conn"]]
    # SQLite's schedule for 40 ms: 1 + 2 + 5 + 10 + 15, then the 7 ms left, then give up.
    assert [w["delay_ms"] for w in waits] == [1, 2, 5, 10, 15, 7, 0]
    assert refused["busy"] == len(waits)


def _read_back(tmp_path: Path, run: Callable[[Session], None], spec: ConnectionSpec) -> list[dict]:
    """The `call` events of the calls `run` makes through a probed session, written to an
    event file and read back as `lockprobe run` reads them."""
    events = EventFile(tmp_path / "events.lpk")
    session = Session(spec, events.append, "g#0")
    try:
        run(session)
    finally:
        session.close()
        events.close()
    return [e for e in read_event_file(events.path) if e["k"] == "call"]


def test_a_call_that_waits_mid_run_is_recorded_with_its_waits_and_the_others_short(
    tmp_path: Path,
) -> None:
    db = tmp_path / "wait.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode = wal")
    holder.execute("CREATE TABLE t (v INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock until the waiter's first retry
    waited = threading.Event()
    events = EventFile(tmp_path / "events.lpk")

    def emit(record: tuple) -> None:
        events.append(record)
        if record[0] == "busy":
            waited.set()

    def release() -> None:
        waited.wait()
        holder.commit()

    releaser = threading.Thread(target=release)
    releaser.start()
    session = Session(ConnectionSpec(str(db), "g", 5000, "autocommit", "wal"), emit, "g#0")
    calls = (
        ("read", "SELECT count(*) FROM t", False),
        ("begin", "BEGIN IMMEDIATE", False),
        ("write", "INSERT INTO t VALUES (1)", False),
        ("commit", "COMMIT", False),
    )
    run = session.prepare("g#0", None, calls, (), True)
    assert run.make() == (4, True)
    releaser.join()
    session.close()
    events.close()
    recorded = list(read_event_file(events.path))
    retries = [e for e in recorded if e["k"] == "busy"]
    made = [(c["op"], tuple(c["stmts"]), c["busy"]) for c in recorded if c["k"] == "call"]
    assert retries and made == [
        ("read", ("SELECT count(*) FROM t",), 0),
        ("begin", ("BEGIN IMMEDIATE",), len(retries)),
        ("write", ("INSERT INTO t VALUES (1)",), 0),
        ("commit", ("COMMIT",), 0),
    ]


def test_each_call_of_a_run_keeps_its_own_statements_however_many_others_ran(
    tmp_path: Path,
) -> None:
    # commit() outside a transaction runs nothing; an INSERT into a table with a trigger is
    # traced more than once: as many entries in the run's trace list as calls, yet not one each.
    db = tmp_path / "trigger.db"
    setup = sqlite3.connect(db, isolation_level=None)
    setup.execute("CREATE TABLE t (v INTEGER)")
    setup.execute("CREATE TABLE log (v INTEGER)")
    setup.execute("CREATE TRIGGER logged AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1); END")
    setup.close()
    calls = (
        ("commit", "COMMIT", False),
        ("write", "INSERT INTO t VALUES (1)", False),
        ("read", "SELECT count(*) FROM log", False),
    )
    spec = ConnectionSpec(str(db), "g", 5000, "autocommit", "delete")
    made = _read_back(tmp_path, lambda s: s.prepare("g#0", None, calls, (), True).make(), spec)
    stmts = [tuple(c["stmts"]) for c in made]
    assert stmts[0] == () and stmts[2] == ("SELECT count(*) FROM log",)
    assert len(stmts[1]) > 1 and set(stmts[1]) == {"INSERT INTO t VALUES (1)"}
    assert [c["busy"] for c in made] == [0, 0, 0]


def test_a_call_refused_mid_run_claims_only_what_it_ran(tmp_path: Path) -> None:
    db = tmp_path / "refused.db"
    sqlite3.connect(db).execute("CREATE TABLE t (v INTEGER)").connection.close()
    calls = (
        ("write", "INSERT INTO t VALUES (1)", False),
        ("begin", "BEGIN IMMEDIATE", False),
        ("begin", "BEGIN", False),  # within a transaction: refused
        ("write", "INSERT INTO t VALUES (2)", False),
        ("commit", "COMMIT", False),
    )
    spec = ConnectionSpec(str(db), "g", 5000, "autocommit", "delete")
    made = _read_back(tmp_path, lambda s: s.prepare("g#0", None, calls, (), False).make(), spec)
    assert [(c["sql"], tuple(c["stmts"]), c["busy"], c["err"]) for c in made] == [
        ("INSERT INTO t VALUES (1)", ("INSERT INTO t VALUES (1)",), 0, None),
        ("BEGIN IMMEDIATE", ("BEGIN IMMEDIATE",), 0, None),
        ("BEGIN", ("BEGIN",), 0, 1),
        ("INSERT INTO t VALUES (2)", ("INSERT INTO t VALUES (2)",), 0, None),
        ("COMMIT", ("COMMIT",), 0, None),
    ]
