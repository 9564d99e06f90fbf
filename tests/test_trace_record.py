"""What `lockprobe trace` records per call, end to end: the short record of a call that went
through reads back as the same `call` event (who, where, what ran), a transaction's calls are
named by the line that began it, and a call that runs many statements keeps them within the
probe's budget, in the log and in the program's own memory.

Runs on every supported CPython (`probe` marker): the probe lives in the traced interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sqlite_lockprobe.probe.tracer import StatementBudget
from tests.statements import same_statements
from tests.test_trace import line_of, trace_python, write_program

pytestmark = pytest.mark.probe


def calls(traced) -> list[dict]:
    return [e for e in traced.events if e["k"] == "call"]


def test_every_call_is_recorded_with_its_op_sql_transaction_state_and_site(tmp_path) -> None:
    source = """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")  # MARK: create
    conn.execute("INSERT INTO t (v) VALUES (?)", (1,))  # MARK: implicit begin
    conn.execute("INSERT INTO t (v) VALUES (?)", (2,))  # MARK: insert 2
    conn.commit()  # MARK: commit
    rows = conn.execute("SELECT v FROM t").fetchall()  # MARK: select
    with conn:  # MARK: with
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(3,), (4,)])  # MARK: many
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")  # MARK: explicit begin
    cur.execute("UPDATE t SET v = v + 1")  # MARK: update
    conn.rollback()  # MARK: rollback
    conn.executescript("SELECT 1; SELECT 2;")  # MARK: script
    print(len(rows))
    """
    traced = trace_python(tmp_path, "prog.py", source, "app.db")
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.proc.stdout.startswith("2\n")

    def site(mark: str | None) -> str | None:
        return mark and f"prog.py:{line_of(source, mark)} <module>"

    insert = "INSERT INTO t (v) VALUES (?)"
    # (op, sql, statements, in_txn, the line of the transaction it is part of, its own line)
    expected = [
        ("execute", "CREATE TABLE t (id INTEGER PRIMARY KEY, v)",
         ("CREATE TABLE t (id INTEGER PRIMARY KEY, v)",), False, None, "create"),
        # Python's implicit BEGIN, as SQLite ran it (the values: tests/statements.py).
        ("execute", insert, ("BEGIN ", "INSERT INTO t (v) VALUES (1)"), True,
         "implicit begin", "implicit begin"),
        # A call that ran its own statement alone keeps its SQL, not its parameter values.
        ("execute", insert, (insert,), True, "implicit begin", "insert 2"),
        ("commit", "COMMIT", ("COMMIT",), False, "implicit begin", "commit"),
        ("execute", "SELECT v FROM t", ("SELECT v FROM t",), False, None, "select"),
        ("executemany", insert,
         ("BEGIN ", "INSERT INTO t (v) VALUES (3)", "INSERT INTO t (v) VALUES (4)"), True,
         "many", "many"),
        ("commit", "COMMIT", ("COMMIT",), False, "many", "with"),
        ("execute", "BEGIN IMMEDIATE", ("BEGIN IMMEDIATE",), True, "explicit begin",
         "explicit begin"),
        ("execute", "UPDATE t SET v = v + 1", ("UPDATE t SET v = v + 1",), True,
         "explicit begin", "update"),
        ("rollback", "ROLLBACK", ("ROLLBACK",), False, "explicit begin", "rollback"),
        ("executescript", "SELECT 1; SELECT 2;", ("SELECT 1;", " SELECT 2;"), False, None,
         "script"),
    ]  # fmt: skip
    got = calls(traced)
    assert [(c["op"], c["sql"], c["in_txn"]) for c in got] == [
        (op, sql, in_txn) for op, sql, _, in_txn, *_ in expected
    ]
    for call, (_, _, stmts, *_) in zip(got, expected, strict=True):
        assert same_statements(call["stmts"], stmts), (call["stmts"], stmts)
    for call, (*_, transaction, own) in zip(got, expected, strict=True):
        # A call that went through is named by the line that began its transaction (outside
        # one, by none); one that took over a millisecond (a commit's fsync, on a loaded
        # machine) by its own line.
        assert call["site"] in (site(transaction), site(own)), call
    pid_thread = {(c["worker"], c["thread"], c["task"], c["conn"]) for c in got}
    assert len(pid_thread) == 1
    worker, thread, task, _ = pid_thread.pop()
    assert worker == "MainThread" and task is None and thread > 0
    assert all(c["busy"] == 0 and c["err"] is None and c["t1"] >= c["t0"] for c in got)


def test_a_failed_call_is_named_by_its_own_line_inside_a_transaction(tmp_path) -> None:
    source = """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("BEGIN")  # MARK: begin
    conn.execute("INSERT INTO t VALUES (1)")
    try:
        conn.execute("INSERT INTO t VALUES (1)")  # MARK: fails
    except sqlite3.IntegrityError as exc:
        print("caught:", exc)
    conn.execute("COMMIT")  # MARK: commit
    """
    traced = trace_python(tmp_path, "prog.py", source, "app.db")
    assert "caught: UNIQUE constraint failed" in traced.proc.stdout, traced.proc.stderr
    failed = [c for c in calls(traced) if c["err"] is not None]
    assert len(failed) == 1
    assert failed[0]["site"] == f"prog.py:{line_of(source, 'fails')} <module>"
    assert failed[0]["err"] == 19 and failed[0]["in_txn"] is True
    commit = calls(traced)[-1]
    assert commit["sql"] == "COMMIT"
    assert commit["site"] in (
        f"prog.py:{line_of(source, mark)} <module>" for mark in ("begin", "commit")
    )


MANY_STATEMENTS = """
import resource, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.executescript('''
CREATE TABLE t (id INTEGER PRIMARY KEY, v);
CREATE TABLE audit (n);
CREATE TRIGGER trg AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (new.v); END;
''')
rows = int(sys.argv[2])
sql = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) INSERT INTO t (v) SELECT i FROM s"
conn.execute(sql, (rows,))  # MARK: many statements
conn.commit()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kib(tmp_path, name: str, rows: int, traced: bool) -> int:
    """The program's own peak RSS, as it prints it."""
    program = write_program(tmp_path, "many.py", MANY_STATEMENTS)
    command = [sys.executable, str(program), str(tmp_path / name), str(rows)]
    if traced:
        command = [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.split()[-1])


def test_a_call_that_runs_many_statements_keeps_them_within_the_budget(tmp_path) -> None:
    rows = 100_000  # each row runs the trigger: SQLite traces one statement per row
    traced = trace_python(tmp_path, "many.py", MANY_STATEMENTS, "app.db", str(rows))
    assert traced.proc.returncode == 0, traced.proc.stderr
    (call,) = [c for c in calls(traced) if c["sql"].startswith("WITH RECURSIVE")]
    assert len(call["stmts"]) <= StatementBudget.LIMIT
    # The first statements are kept (and the last), the rest counted: the INSERT itself (not
    # Python's implicit BEGIN, which Python leaves out for a statement that starts with WITH),
    # then the trigger's statements, at least one per row (SQLite 3.40 traces two).
    assert call["stmts"][0].startswith("WITH RECURSIVE")
    assert len(call["stmts"]) + call["folded"] >= rows + 1
    assert call["site"] == f"many.py:{line_of(MANY_STATEMENTS, 'many statements')} <module>"


def test_many_statements_in_one_call_do_not_grow_the_programs_memory(tmp_path) -> None:
    # The statements of one call used to be kept whole until it returned: one INSERT ... SELECT
    # of 1,000,000 rows with a trigger grew the program from 110 MB to 418 MB. Now what the
    # many rows add to the traced program's peak memory is what they add untraced, within the
    # budget's few MiB (the trace hook's strings between two folds).
    small, large = 1_000, 300_000
    bare_growth = peak_rss_kib(tmp_path, "b1.db", large, False) - peak_rss_kib(
        tmp_path, "b0.db", small, False
    )
    traced_growth = peak_rss_kib(tmp_path, "t1.db", large, True) - peak_rss_kib(
        tmp_path, "t0.db", small, True
    )
    assert traced_growth <= max(bare_growth, 0) + 8 * 1024, (bare_growth, traced_growth)


def test_folding_keeps_the_first_the_last_and_every_transaction_statement() -> None:
    class State:
        folded = 0
        statements = ["BEGIN "] + [f"INSERT {i}" for i in range(1000)] + ["COMMIT"]

    state = State()
    statements = state.statements
    statements[500] = "SAVEPOINT s"
    statements[700] = "RELEASE s"
    original = list(statements)
    budget = StatementBudget(state)  # type: ignore[arg-type]
    assert budget() == 0  # as SQLite's progress handler: it folds, and never interrupts
    assert len(statements) <= StatementBudget.LIMIT
    assert statements[: StatementBudget.FIRST] == original[: StatementBudget.FIRST]
    assert statements[-StatementBudget.LAST :] == original[-StatementBudget.LAST :]
    assert "SAVEPOINT s" in statements and "RELEASE s" in statements
    assert state.folded + len(statements) == len(original)
    # A statement reported again (once per trigger it fires) is kept once.
    state.folded = 0
    statements[:] = ["INSERT big"] * 201 + ["COMMIT"]
    budget.fold(statements)
    assert statements == ["INSERT big", "COMMIT"] and state.folded == 200
    del State.statements
    assert budget() == 0  # even when it cannot fold


POOL_TERMINATED = """
import multiprocessing, os, sqlite3, sys

DB = sys.argv[1]


def work(args):
    n, done = args
    conn = sqlite3.connect(DB, timeout=10)
    for i in range(25):
        conn.execute("INSERT INTO t (worker, i) VALUES (?, ?)", (n, i))
        conn.commit()
    done.put(n)  # all its calls made; terminate() comes before the next periodic flush
    multiprocessing.Event().wait()  # like a busy worker: until terminated


if __name__ == "__main__":
    setup = sqlite3.connect(DB)
    setup.execute("CREATE TABLE t (worker, i)")
    setup.commit()
    setup.close()
    ctx = multiprocessing.get_context("fork")
    manager = ctx.Manager()
    done = manager.Queue()
    pool = ctx.Pool(3)
    pool.map_async(work, [(n, done) for n in range(3)])
    for _ in range(3):
        done.get(timeout=60)
    pool.terminate()  # SIGTERM to every worker
    pool.join()
    manager.shutdown()
    print("rows", sqlite3.connect(DB).execute("SELECT count(*) FROM t").fetchone()[0])
"""


def test_workers_ended_by_pool_terminate_lose_no_recorded_call(tmp_path) -> None:
    traced = trace_python(tmp_path, "pool.py", POOL_TERMINATED, "app.db")
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert "rows 75" in traced.proc.stdout
    inserts = [c for c in calls(traced) if c["sql"].startswith("INSERT INTO t")]
    commits = [
        c for c in calls(traced) if c["op"] == "commit" and c["conn"] != calls(traced)[0]["conn"]
    ]
    assert len(inserts) == 75 and len(commits) >= 75
    # No transaction is left open by the recording's end: each one's COMMIT was written.
    assert traced.report["findings"] == [], traced.report["findings"]


UNFINISHED_EXPORT = """
import sqlite3, sys, threading

DB = sys.argv[1]
setup = sqlite3.connect(DB)
setup.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
setup.executemany("INSERT INTO items (name) VALUES (?)", [(f"item {i}",) for i in range(1000)])
setup.commit()
setup.close()
reading, writer_done = threading.Event(), threading.Event()


def export():
    conn = sqlite3.connect(DB, timeout=0.5)
    cursor = conn.execute("SELECT id, name FROM items")
    first = cursor.fetchmany(10)  # stops reading halfway: the statement stays unfinished
    reading.set()
    writer_done.wait()  # MARK: export paused
    cursor.close()
    conn.close()
    print("exported", len(first))


def writer():
    conn = sqlite3.connect(DB, timeout=0.5)
    reading.wait()
    conn.execute("INSERT INTO items (name) VALUES ('new')")
    try:
        conn.commit()
    except sqlite3.OperationalError as exc:
        print("commit failed:", exc)
        conn.rollback()
    writer_done.set()
    conn.close()


threads = [threading.Thread(target=export), threading.Thread(target=writer)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_a_cursor_left_unfinished_outside_a_transaction_is_the_reader_a_commit_waits_for(
    tmp_path,
) -> None:
    # Rollback journal, legacy autocommit (no BEGIN): the unfinished SELECT keeps SHARED, and
    # the other thread's COMMIT fails after its whole busy_timeout. It used to be reported as
    # "no lock problems found".
    traced = trace_python(tmp_path, "export.py", UNFINISHED_EXPORT, "app.db")
    assert "commit failed: database is locked" in traced.proc.stdout, traced.proc.stderr
    assert [f["pattern"] for f in traced.report["findings"]] == ["reader-blocks-writer"]
    (finding,) = traced.report["findings"]
    assert finding["evidence"]["unfinished_statements"] == 1
    reader = finding["evidence"]["worst_reader"]
    assert reader["taken_by"] == "SELECT id, name FROM items"
    assert reader["released_by"] == "unfinished statement"
    paused = f"export.py:{line_of(UNFINISHED_EXPORT, 'export paused')} export"
    assert paused in traced.evidence()
    sightings = [e for e in traced.events if e["k"] == "unfinished"]
    assert sightings and {e["sql"] for e in sightings} == {"SELECT id, name FROM items"}


REUSED_IDENT = """
import sqlite3, sys, threading

pool = sqlite3.connect(sys.argv[1], isolation_level=None, check_same_thread=False)
pool.execute("PRAGMA synchronous=OFF")  # calls well under a millisecond: recorded in short
pool.execute("CREATE TABLE t (v INTEGER)")
idents = []


def work(n):
    idents.append(threading.get_ident())
    for i in range(n):
        pool.execute("INSERT INTO t VALUES (?)", (i,))


for name, n in (("first", 2), ("second", 3), ("third", 4)):
    thread = threading.Thread(target=work, args=(n,), name=name)
    thread.start()
    thread.join()  # ended: the next thread usually gets the same ident
print("same ident" if len(set(idents)) == 1 else "distinct idents")
"""


def test_a_thread_that_reuses_an_ended_threads_ident_is_recorded_as_itself(tmp_path) -> None:
    traced = trace_python(tmp_path, "reuse.py", REUSED_IDENT, "app.db")
    assert traced.proc.returncode == 0, traced.proc.stderr
    inserts = [c for c in calls(traced) if c["sql"].startswith("INSERT")]
    by_worker = {
        w: sum(1 for c in inserts if c["worker"] == w) for w in {c["worker"] for c in inserts}
    }
    assert by_worker == {"first": 2, "second": 3, "third": 4}, traced.proc.stdout


SAME_NAMES = """
import sqlite3, sys, threading

setup = sqlite3.connect(sys.argv[1])
setup.execute("CREATE TABLE t (v INTEGER)")
setup.commit()
started = threading.Barrier(3)


def handle(n):
    started.wait()  # all three alive at once: three threads, one name
    conn = sqlite3.connect(sys.argv[1], timeout=10)
    for i in range(n):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.commit()
    conn.close()


threads = [threading.Thread(target=handle, args=(n,), name="pool worker") for n in (1, 2, 3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_threads_of_one_name_are_workers_of_their_own_in_one_group(tmp_path) -> None:
    # A thread pool names every thread alike (AnyIO's "AnyIO worker thread"): 40 request
    # threads were one worker, "1 thr", in the summary.
    traced = trace_python(tmp_path, "pool.py", SAME_NAMES, "app.db")
    assert traced.proc.returncode == 0, traced.proc.stderr
    workers = {e["worker"]: e for e in traced.events if e["k"] == "worker"}
    pool = sorted(w for w in workers if w.startswith("pool worker"))
    assert pool == ["pool worker", "pool worker#2", "pool worker#3"]
    assert {workers[w]["group"] for w in pool} == {"pool worker"}
    inserts = sorted(
        sum(1 for c in calls(traced) if c["worker"] == w and c["sql"].startswith("INSERT"))
        for w in pool
    )
    assert inserts == [1, 2, 3]
    (group,) = [g for g in traced.report["summary"]["groups"] if g["group"] == "pool worker"]
    assert group["workers"] == 3
