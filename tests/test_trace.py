"""`lockprobe trace -- CMD` end to end: real small programs, run unchanged under the real CLI
(`python -m sqlite_lockprobe trace`), with real threads, tasks and processes. Contention is
lined up with events (threading, asyncio, multiprocessing), never with sleeps.

Runs on every supported CPython (`probe` marker): the injected probe lives in the traced
interpreter, so it must work on each of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.probe

SAFETY_TIMEOUT = 120  # seconds: a hung test fails instead of hanging CI; never an assertion


UPGRADE_DEADLOCK = """
import sqlite3
import sys
import threading

DB = sys.argv[1]
setup = sqlite3.connect(DB)
setup.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
setup.commit()
setup.close()

has_read, b_wrote, a_done = threading.Event(), threading.Event(), threading.Event()


def view_a():
    conn = sqlite3.connect(DB, timeout=2)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM t").fetchall()
    has_read.set()
    b_wrote.wait()
    try:
        conn.execute("INSERT INTO t (v) VALUES (1)")  # MARK: refused upgrade
    except sqlite3.OperationalError as exc:
        print("view_a:", exc)
        conn.rollback()
    a_done.set()
    conn.close()


def view_b():
    conn = sqlite3.connect(DB, timeout=2)
    has_read.wait()
    conn.execute("INSERT INTO t (v) VALUES (2)")  # MARK: winner takes the lock
    b_wrote.set()
    a_done.wait()
    conn.commit()
    conn.close()


threads = [
    threading.Thread(target=view_a, name="view_a"),
    threading.Thread(target=view_b, name="view_b"),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

SELF_DEADLOCK = """
import asyncio
import sqlite3
import sys

DB = sys.argv[1]


async def session_b(flushed, release):
    conn = sqlite3.connect(DB, timeout=0.5)
    conn.execute("INSERT INTO items (name) VALUES ('b')")  # MARK: holder takes the lock
    flushed.set()
    await release.wait()  # awaits while it holds the write lock
    conn.commit()
    conn.close()


async def session_a(flushed, release):
    conn = sqlite3.connect(DB, timeout=0.5)
    await flushed.wait()
    try:
        conn.execute("INSERT INTO items (name) VALUES ('a')")  # MARK: blocks the loop
    except sqlite3.OperationalError as exc:
        print("session_a:", exc)
    release.set()
    conn.close()


async def main():
    setup = sqlite3.connect(DB)
    setup.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)")
    setup.commit()
    setup.close()
    flushed, release = asyncio.Event(), asyncio.Event()
    await asyncio.gather(
        asyncio.create_task(session_b(flushed, release), name="session_b"),
        asyncio.create_task(session_a(flushed, release), name="session_a"),
    )


asyncio.run(main())
"""

LONG_WRITE = """
import multiprocessing
import sqlite3
import sys


def purge(db, holds, done):
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # MARK: purge takes the lock
    conn.execute("UPDATE jobs SET state = 'purging'")
    holds.set()
    done.wait()  # slow work while it holds the write lock
    conn.execute("COMMIT")
    conn.close()


def worker(db, holds, done):
    conn = sqlite3.connect(db, timeout=0.3, isolation_level=None)
    holds.wait()
    try:
        conn.execute("BEGIN IMMEDIATE")  # MARK: worker waits
        conn.execute("UPDATE jobs SET updated = updated + 1")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        print("worker:", exc)
    done.set()
    conn.close()


if __name__ == "__main__":
    db, method = sys.argv[1], sys.argv[2]
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT, updated INTEGER)")
    setup.execute("INSERT INTO jobs (state, updated) VALUES ('queued', 0)")
    setup.commit()
    setup.close()
    ctx = multiprocessing.get_context(method)
    holds, done = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=purge, args=(db, holds, done), name="purge"),
        ctx.Process(target=worker, args=(db, holds, done), name="worker"),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode for p in procs))
"""

HEALTHY = """
import sqlite3
import sys
import threading

DB = sys.argv[1]
setup = sqlite3.connect(DB)
setup.execute("PRAGMA journal_mode=WAL")
setup.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
setup.commit()
setup.close()


def writer(n):
    conn = sqlite3.connect(DB, isolation_level=None)
    for i in range(50):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        conn.execute("COMMIT")
    conn.close()


threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("rows", sqlite3.connect(DB).execute("SELECT count(*) FROM t").fetchone()[0])
"""


@dataclass
class Traced:
    proc: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def patterns(self) -> list[str]:
        return sorted(f["pattern"] for f in self.report["findings"])

    def evidence(self) -> str:
        return "\n".join(line for f in self.report["findings"] for line in f["evidence"]["lines"])


def program_text(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


def line_of(source: str, mark: str) -> int:
    """The line number of the line marked `# MARK: <mark>` in a program."""
    for number, line in enumerate(program_text(source).splitlines(), 1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(f"no line marked {mark!r}")


def write_program(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(program_text(source))
    return path


def lockprobe_trace(
    tmp_path: Path, *command: str, options: tuple[str, ...] = (), **popen: Any
) -> Traced:
    """Run `python -m sqlite_lockprobe trace --json --events [options] -- command`."""
    report, events = tmp_path / "report.json", tmp_path / "events.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sqlite_lockprobe",
            "trace",
            "--json",
            str(report),
            "--events",
            str(events),
            *options,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        cwd=tmp_path,
        **popen,
    )
    loaded = json.loads(report.read_text()) if report.exists() else {}
    logged = (
        [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    )
    return Traced(proc, loaded, logged)


def trace_python(tmp_path: Path, name: str, source: str, *args: str, **kw: Any) -> Traced:
    program = write_program(tmp_path, name, source)
    return lockprobe_trace(tmp_path, sys.executable, program.name, *args, **kw)


# ----------------------------------------------------------------- the four acceptance programs


def test_threads_deferred_read_then_write_is_upgrade_deadlock_at_the_users_line(tmp_path) -> None:
    traced = trace_python(tmp_path, "views.py", UPGRADE_DEADLOCK, "app.db", options=("-q",))
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.patterns == ["upgrade-deadlock"]
    evidence = traced.evidence()
    assert f"views.py:{line_of(UPGRADE_DEADLOCK, 'refused upgrade')} view_a" in evidence
    assert f"views.py:{line_of(UPGRADE_DEADLOCK, 'winner takes the lock')} view_b" in evidence
    assert "view_a: database is locked" in traced.proc.stdout  # the program's own output
    assert traced.report["command"] == "trace"
    assert traced.report["trace"]["exit_code"] == 0


def test_asyncio_blocking_calls_on_one_loop_are_self_deadlock_with_task_names(tmp_path) -> None:
    traced = trace_python(tmp_path, "endpoints.py", SELF_DEADLOCK, "app.db", options=("-q",))
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.patterns == ["self-deadlock"]
    evidence = traced.evidence()
    assert "task session_a" in evidence and "task session_b" in evidence
    assert f"endpoints.py:{line_of(SELF_DEADLOCK, 'blocks the loop')} session_a" in evidence
    assert f"endpoints.py:{line_of(SELF_DEADLOCK, 'holder takes the lock')} session_b" in evidence


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_child_processes_are_traced_and_a_long_write_transaction_is_found(
    tmp_path, start_method: str
) -> None:
    traced = trace_python(tmp_path, "jobs.py", LONG_WRITE, "app.db", start_method)
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.patterns == ["long-write-transaction"]
    evidence = traced.evidence()
    assert f"jobs.py:{line_of(LONG_WRITE, 'purge takes the lock')} purge" in evidence
    assert f"jobs.py:{line_of(LONG_WRITE, 'worker waits')} worker" in evidence
    call_pids = {e["conn"].split(".")[0] for e in traced.events if e["k"] == "call"}
    pids = traced.report["trace"]["pids"]
    assert len(pids) == 3  # the program and its two children
    assert {f"c{pid}" for pid in pids} <= call_pids | {f"c{pids[0]}"}
    child_opens = [e for e in traced.events if e["k"] == "open" and e["pid"] != pids[0]]
    assert len(child_opens) == 2


def test_healthy_program_has_no_findings(tmp_path) -> None:
    traced = trace_python(tmp_path, "healthy.py", HEALTHY, "app.db")
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.report["findings"] == []
    assert traced.report["summary"]["total"]["commits"] >= 150
    assert "rows 150" in traced.proc.stdout
    assert "Diagnosis: no lock problems found" in traced.proc.stdout  # --json FILE + terminal


AIOSQLITE = """
import asyncio
import sys

import aiosqlite

DB = sys.argv[1]


async def write(number, holds, release):
    async with aiosqlite.connect(DB, timeout=0.3) as db:
        if number == 0:
            await db.execute("INSERT INTO person (name) VALUES ('holder')")  # MARK: holder
            holds.set()
            await release.wait()  # an await while it holds the write lock
            await db.commit()
        else:
            await holds.wait()
            try:
                await db.execute("INSERT INTO person (name) VALUES ('waiter')")  # MARK: waiter
            except aiosqlite.OperationalError as exc:
                print("waiter:", exc)
            release.set()


async def main():
    async with aiosqlite.connect(DB) as db:
        await db.execute("CREATE TABLE IF NOT EXISTS person (id INTEGER PRIMARY KEY, name TEXT)")
        await db.commit()
    holds, release = asyncio.Event(), asyncio.Event()
    await asyncio.gather(
        *(asyncio.create_task(write(n, holds, release), name=f"writer-{n}") for n in range(2))
    )


asyncio.run(main())
"""


def test_aiosqlite_calls_are_attributed_to_the_awaiting_task_and_its_line(tmp_path) -> None:
    pytest.importorskip("aiosqlite")
    traced = trace_python(tmp_path, "aio.py", AIOSQLITE, "app.db", options=("-q",))
    assert traced.proc.returncode == 0, traced.proc.stderr
    # aiosqlite's own thread waits, not the event loop: a long hold, not a self-deadlock.
    assert traced.patterns == ["long-write-transaction"]
    evidence = traced.evidence()
    assert f"aio.py:{line_of(AIOSQLITE, 'holder')} write" in evidence
    assert f"aio.py:{line_of(AIOSQLITE, 'waiter')} write" in evidence
    assert "task writer-0" in evidence and "task writer-1" in evidence
    loop_thread = {e["thread"] for e in traced.events if e["k"] == "worker" and e["task"]}
    call_threads = {e["thread"] for e in traced.events if e["k"] == "call"}
    assert not loop_thread & call_threads  # the calls ran on aiosqlite's threads


# ----------------------------------------------------------------------- exit codes, bad input


def test_the_programs_exit_code_is_preserved(tmp_path) -> None:
    source = """
    import sqlite3, sys
    sqlite3.connect(sys.argv[1]).execute("CREATE TABLE t (x)")
    sys.exit(3)
    """
    traced = trace_python(tmp_path, "three.py", source, "app.db")
    assert traced.proc.returncode == 3
    assert traced.report["trace"]["exit_code"] == 3
    assert "exited with code 3" in traced.proc.stdout


def test_fail_on_a_found_pattern_exits_1_and_other_patterns_keep_the_exit_code(tmp_path) -> None:
    found = trace_python(
        tmp_path,
        "views.py",
        UPGRADE_DEADLOCK,
        "a.db",
        options=("-q", "--fail-on", "upgrade-deadlock"),
    )
    assert found.proc.returncode == 1
    assert "upgrade-deadlock (--fail-on)" in found.proc.stderr
    other = trace_python(
        tmp_path, "views.py", UPGRADE_DEADLOCK, "b.db", options=("-q", "--fail-on", "self-deadlock")
    )
    assert other.proc.returncode == 0
    anything = trace_python(
        tmp_path, "views.py", UPGRADE_DEADLOCK, "c.db", options=("-q", "--fail-on", "any")
    )
    assert anything.proc.returncode == 1


def test_expect_mismatch_exits_1(tmp_path) -> None:
    traced = trace_python(
        tmp_path, "views.py", UPGRADE_DEADLOCK, "a.db", options=("-q", "--expect", "healthy")
    )
    assert traced.proc.returncode == 1
    assert "expected patterns ['healthy'], found ['upgrade-deadlock']" in traced.proc.stderr


def test_a_command_that_does_not_exist_is_one_line_and_exit_127(tmp_path) -> None:
    traced = lockprobe_trace(tmp_path, "no-such-program-lockprobe-test", "arg")
    assert traced.proc.returncode == 127
    assert traced.proc.stderr == "lockprobe: no-such-program-lockprobe-test: command not found\n"
    assert traced.proc.stdout == ""


@pytest.mark.parametrize(("command", "code"), [("true", 0), ("false", 1)])
def test_a_program_without_sqlite3_has_nothing_to_trace(tmp_path, command: str, code: int) -> None:
    traced = lockprobe_trace(tmp_path, command)
    assert traced.proc.returncode == code
    assert "nothing to trace (no sqlite3 connection recorded)" in traced.proc.stdout
    assert traced.report["findings"] == []
    assert traced.report["trace"]["nothing_recorded"] is True


def test_a_program_killed_by_sigkill_still_reports_what_it_recorded(tmp_path) -> None:
    # The program waits until its events reached the trace directory (the periodic flush),
    # then kills itself: nothing runs at exit.
    source = """
    import glob, os, sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")  # MARK: last call
    pattern = os.path.join(os.environ["LOCKPROBE_TRACE_DIR"], "events-*")
    while not any(b"INSERT" in open(f, "rb").read() for f in glob.glob(pattern)):
        time.sleep(0.01)
    os.kill(os.getpid(), 9)
    """
    traced = trace_python(tmp_path, "killed.py", source, "app.db")
    assert traced.proc.returncode == 128 + 9
    assert traced.report["trace"]["signal"] == 9
    assert "killed by SIGKILL" in traced.proc.stdout
    sites = [e["site"] for e in traced.events if e["k"] == "call"]
    assert f"killed.py:{line_of(source, 'last call')} <module>" in sites


def signal_when_ready(
    tmp_path: Path, name: str, source: str, signum: int
) -> tuple[subprocess.Popen[str], str, str, Path]:
    """Trace a server-like program (`--json report.json`, database app.db) and send lockprobe
    `signum` once the program wrote the file `ready`; (process, stdout, stderr, report)."""
    program = write_program(tmp_path, name, source)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlite_lockprobe", "trace", "--json", str(report)]
        + ["--", sys.executable, program.name, "app.db"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the program never got ready"
            time.sleep(0.01)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=SAFETY_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, out, err, report


def test_sigint_to_lockprobe_is_passed_to_the_program_and_the_report_follows(tmp_path) -> None:
    source = """
    import os, sqlite3, sys, threading
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    open("ready", "w").close()
    try:
        threading.Event().wait()  # like a server: until Ctrl-C
    except KeyboardInterrupt:
        print("program: interrupted")
        raise
    """
    proc, out, err, report = signal_when_ready(tmp_path, "server.py", source, signal.SIGINT)
    assert proc.returncode == 130, err
    assert "program: interrupted" in out
    assert "KeyboardInterrupt" in err  # the program's own traceback, passed through
    assert "Diagnosis" in out
    data = json.loads(report.read_text())["trace"]
    assert data["interrupted"] is True and data["signal"] == signal.SIGINT
    assert data["connections"] == 1


def test_a_program_that_execs_another_keeps_both_recordings_apart(tmp_path) -> None:
    # exec keeps the pid: the first program's events are flushed before it is replaced, and
    # the second numbers its connections on, so the two connections stay two.
    write_program(
        tmp_path,
        "second.py",
        """
        import sqlite3
        conn = sqlite3.connect("app.db")
        conn.execute("INSERT INTO t VALUES ('second')")  # MARK: second
        conn.commit()
        """,
    )
    source = """
    import os, sqlite3, sys
    conn = sqlite3.connect("app.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES ('first')")  # MARK: first
    conn.commit()
    os.execv(sys.executable, [sys.executable, "second.py"])
    """
    traced = trace_python(tmp_path, "first.py", source)
    assert traced.proc.returncode == 0, traced.proc.stderr
    opens = [e for e in traced.events if e["k"] == "open"]
    assert len({e["conn"] for e in opens}) == 2 and len({e["pid"] for e in opens}) == 1
    sites = {e["site"] for e in traced.events if e["k"] == "call"}
    assert f"first.py:{line_of(source, 'first')} <module>" in sites
    assert "second.py:3 <module>" in sites


# --------------------------------------------------------------------- the program is unchanged


BEHAVIOUR = """
import sqlite3, sys, threading

class Conn(sqlite3.Connection):
    def hello(self):
        return "hello from " + type(self).__name__

class Cur(sqlite3.Cursor):
    def first(self, sql):
        return self.execute(sql).fetchone()

conn = sqlite3.connect(sys.argv[1], factory=Conn, isolation_level="DEFERRED")
print(type(conn).__name__, isinstance(conn, Conn), isinstance(conn, sqlite3.Connection), conn.hello())
conn.row_factory = sqlite3.Row
conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
conn.executemany("INSERT INTO t (name) VALUES (?)", [("a",), ("b",)])
with conn:
    conn.execute("INSERT INTO t (name) VALUES ('c')")
try:
    with conn:
        conn.execute("INSERT INTO t (name) VALUES ('d')")
        raise ValueError("rolled back")
except ValueError as exc:
    print("context manager:", exc)
conn.executescript("CREATE TABLE u (x); INSERT INTO u VALUES (1);")
rows = conn.execute("SELECT * FROM t ORDER BY id").fetchall()
print([tuple(r) for r in rows], rows[0].keys(), type(rows[0]).__name__)
cur = conn.cursor(factory=Cur)
print(type(cur).__name__, isinstance(cur, Cur), cur.first("SELECT count(*) FROM t")[0], cur.lastrowid)
seen = []
conn.set_trace_callback(seen.append)
conn.execute("SELECT 1")
conn.set_trace_callback(None)
print("trace callback saw", seen)
print("in transaction", conn.in_transaction, "total changes", conn.total_changes)
print("busy_timeout", conn.execute("PRAGMA busy_timeout").fetchone()[0])
conn.execute("PRAGMA busy_timeout = 1234")
print("busy_timeout", conn.execute("SELECT * FROM pragma_busy_timeout").fetchone()[0])
print("dump lines", len(list(conn.iterdump())))
try:
    conn.execute("INSERT INTO t (name) VALUES ('a')")
except sqlite3.IntegrityError as exc:
    print("integrity:", type(exc).__name__, exc, getattr(exc, "sqlite_errorname", "-"))
try:
    conn.execute("SELEC nonsense")
except sqlite3.OperationalError as exc:
    print("syntax:", exc)
conn.close()
try:
    conn.execute("SELECT 1")
except sqlite3.ProgrammingError as exc:
    print("closed:", exc)
print("threads", threading.active_count(), [t.name for t in threading.enumerate()])
raise LookupError("the program's own failure")
"""


def test_the_program_behaves_the_same_with_and_without_trace(tmp_path) -> None:
    program = write_program(tmp_path, "behaviour.py", BEHAVIOUR)
    plain_dir, traced_dir = tmp_path / "plain", tmp_path / "traced"
    plain_dir.mkdir()
    traced_dir.mkdir()
    plain = subprocess.run(
        [sys.executable, str(program), "app.db"],
        capture_output=True,
        text=True,
        cwd=plain_dir,
        timeout=SAFETY_TIMEOUT,
    )
    traced = lockprobe_trace(traced_dir, sys.executable, str(program), "app.db")
    assert traced.proc.returncode == plain.returncode == 1
    assert traced.proc.stdout.startswith(plain.stdout)  # then the report
    assert plain.stderr.splitlines()[-1] == "LookupError: the program's own failure"
    assert traced.proc.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]
    recorded = [e for e in traced.events if e["k"] == "call"]
    assert {e["op"] for e in recorded} >= {"execute", "executemany", "executescript", "commit"}
    assert any(e["op"] == "rollback" for e in recorded)  # the context manager's rollback
    assert any(e["err"] == 19 for e in recorded)  # SQLITE_CONSTRAINT, recorded as it happened
    assert "busy_timeout 5000\nbusy_timeout 1234\n" in traced.proc.stdout
    assert not any("= 5000" in s for e in recorded for s in e["stmts"])  # lockprobe's own


def test_db_limits_recording_to_one_database(tmp_path) -> None:
    source = """
    import sqlite3, sys
    for name in ("app.db", "other.db", ":memory:"):
        conn = sqlite3.connect(name)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
    """
    everything = trace_python(tmp_path, "two.py", source)
    assert everything.report["trace"]["connections"] == 3
    (tmp_path / "app.db").unlink()
    (tmp_path / "other.db").unlink()
    one = trace_python(tmp_path, "two.py", source, options=("--db", "app.db"))
    opens = [e for e in one.events if e["k"] == "open"]
    assert len(opens) == 1
    assert one.report["database"]["path"] == str((tmp_path / "app.db").resolve())


def test_an_existing_sitecustomize_still_runs(tmp_path) -> None:
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text("print('their sitecustomize ran')\n")
    source = """
    import sqlite3
    sqlite3.connect("app.db").execute("CREATE TABLE t (x)")
    """
    env = {**os.environ, "PYTHONPATH": str(site_dir)}
    traced = trace_python(tmp_path, "prog.py", source, env=env)
    assert traced.proc.stdout.startswith("their sitecustomize ran\n")
    assert traced.report["trace"]["connections"] == 1


@pytest.mark.parametrize(
    "first", ["sqlite_lockprobe.probe.tracer", "sqlite_lockprobe.probe.capi", "sqlite_lockprobe"]
)
def test_a_program_that_imports_lockprobe_before_sqlite3_is_traced(tmp_path, first: str) -> None:
    # A program that uses lockprobe itself (the recorder, its own probe) and is traced too:
    # lockprobe's modules are loaded before sqlite3, and none of them imports sqlite3 while
    # half loaded (the injected hook would then find the probe half loaded, and give up).
    source = f"""
    import {first}
    import sqlite3
    conn = sqlite3.connect("app.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    """
    traced = trace_python(tmp_path, "prog.py", source)
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert "not active" not in traced.proc.stderr
    assert traced.report["trace"]["connections"] == 1
    assert [e["sql"] for e in traced.events if e["k"] == "call"] == [
        "CREATE TABLE t (x)",
        "COMMIT",
    ]


def test_the_probe_needs_only_the_standard_library(tmp_path) -> None:
    # A bare virtual environment: no click, rich or psutil, and no lockprobe installed.
    bare = tmp_path / "bare"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(bare)],
        check=True,
        timeout=SAFETY_TIMEOUT,
    )
    python = bare / "bin" / "python"
    source = """
    import sqlite3, sys
    for name in ("click", "rich", "psutil"):
        assert name not in sys.modules, name
    sqlite3.connect("app.db").execute("CREATE TABLE t (x)")
    """
    program = write_program(tmp_path, "prog.py", source)
    traced = lockprobe_trace(tmp_path, str(python), program.name)
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.proc.stderr == ""
    assert traced.report["trace"]["connections"] == 1


# ------------------------------------------------------------------------ Ctrl-C and signals


def test_ctrl_c_during_a_busy_wait_reaches_the_program(tmp_path) -> None:
    # ctypes drops exceptions raised inside a C callback; the probe keeps the KeyboardInterrupt
    # and the traced call re-raises it, so the program sees Ctrl-C as it would untraced.
    source = """
    import glob, os, signal, sqlite3, sys, threading, time
    holder = sqlite3.connect(sys.argv[1], isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")

    def interrupt_once_waiting():
        pattern = os.path.join(os.environ["LOCKPROBE_TRACE_DIR"], "events-*")
        while not any(b"busy" in open(f, "rb").read() for f in glob.glob(pattern)):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_waiting, daemon=True).start()
    waiter = sqlite3.connect(sys.argv[1], timeout=600)
    print("busy_timeout", waiter.execute("PRAGMA busy_timeout").fetchone()[0])
    try:
        waiter.execute("INSERT INTO t VALUES (2)")
    except KeyboardInterrupt:
        print("program: Ctrl-C while waiting")
    """
    traced = trace_python(tmp_path, "wait.py", source, "app.db", options=("-q",))
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert "program: Ctrl-C while waiting" in traced.proc.stdout
    assert "busy_timeout 600000" in traced.proc.stdout  # as untraced, not 0
    assert "Exception ignored" not in traced.proc.stderr
    waits = [e for e in traced.events if e["k"] == "call" and e["busy"]]
    assert len(waits) == 1 and waits[0]["msg"].startswith("KeyboardInterrupt")


def test_ctrl_c_in_a_terminal_reaches_the_program_and_the_report_follows(tmp_path) -> None:
    import pty

    source = """
    import sqlite3, sys, threading
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    open("ready", "w").close()
    threading.Event().wait()  # until Ctrl-C
    """
    program = write_program(tmp_path, "server.py", source)
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--json", str(report)]
    argv += ["--", sys.executable, str(program), str(tmp_path / "app.db")]
    # lockprobe in its own terminal session, the pty its controlling terminal. Started by a
    # small launcher, not pty.fork(): a fork of this process (pytest-xdist's threads) may only
    # exec, so the session is made in a fresh interpreter.
    launcher = (
        "import fcntl, os, sys, termios; os.setsid(); "
        "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
    )
    master, terminal = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", launcher, *argv],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
    )
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline, "the program never got ready"
            time.sleep(0.01)
        os.write(master, b"\x03")  # the terminal's Ctrl-C: SIGINT to the foreground group
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal closed, everyone exited
                break
            if not chunk:
                break
            output += chunk
        status = child.wait(timeout=SAFETY_TIMEOUT)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
    assert status == 130, output
    assert b"KeyboardInterrupt" in output
    data = json.loads(report.read_text())["trace"]
    assert data["interrupted"] is True and data["signal"] == signal.SIGINT
    assert data["escalated"] is None


def test_a_program_that_ignores_ctrl_c_is_stopped_after_the_grace_period(tmp_path) -> None:
    # The program counts SIGINTs and ignores SIGTERM; the test sends the second Ctrl-C only
    # after the program has seen the first, so the two are never merged into one signal.
    source = """
    import signal, sqlite3, sys, threading
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    seen = []
    def count(signum, frame):
        seen.append(signum)
        open(f"got-{len(seen)}", "w").close()
    signal.signal(signal.SIGINT, count)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open("ready", "w").close()
    while True:
        threading.Event().wait(3600)
    """
    program = write_program(tmp_path, "stubborn.py", source)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--grace", "0.2"]
        + ["--json", str(report), "--", sys.executable, program.name, "app.db"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_for(name: str) -> None:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while not (tmp_path / name).exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{name} never appeared"
            time.sleep(0.01)

    try:
        wait_for("ready")
        proc.send_signal(signal.SIGINT)
        wait_for("got-1")
        proc.send_signal(signal.SIGINT)
        wait_for("got-2")
        _, err = proc.communicate(timeout=SAFETY_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, err
    data = json.loads(report.read_text())["trace"]
    assert data["escalated"] == "SIGKILL" and data["signal"] == signal.SIGKILL
    assert data["connections"] == 1


def test_only_a_terminal_ctrl_c_to_our_own_process_group_is_not_passed_on() -> None:
    from types import SimpleNamespace

    from sqlite_lockprobe.sources.trace import _program_got_it_too

    same_group = SimpleNamespace(pid=os.getpid())  # a "child" in our own process group
    terminal = SimpleNamespace(si_signo=signal.SIGINT, si_code=0x80)  # SI_KERNEL
    kill = SimpleNamespace(si_signo=signal.SIGINT, si_code=0)  # SI_USER: kill(1)
    term = SimpleNamespace(si_signo=signal.SIGTERM, si_code=0x80)
    assert _program_got_it_too(same_group, terminal) is True
    assert _program_got_it_too(same_group, kill) is False
    assert _program_got_it_too(same_group, term) is False


# ------------------------------------------------------------------ helpers of the probe itself


def test_database_path_follows_plain_names_uris_and_skips_memory_databases(tmp_path) -> None:
    from sqlite_lockprobe.probe.tracer import database_path

    target = str((tmp_path / "app.db").resolve())
    assert database_path(tmp_path / "app.db", False) == target
    assert database_path(str(tmp_path / "app.db").encode(), False) == target
    assert database_path(f"file:{tmp_path}/app.db?mode=ro", True) == target
    assert database_path(f"file://{tmp_path}/app%2Edb", True) == target
    assert database_path("file:shared?mode=memory&cache=shared", True) is None
    assert database_path(":memory:", False) is None
    assert database_path("", False) is None
    # Without uri=True a "file:" name is a plain file name, as SQLite reads it.
    assert database_path("file:x.db", False) == os.path.realpath("file:x.db")


def test_database_path_of_a_relative_name_follows_the_working_directory(
    tmp_path, monkeypatch
) -> None:
    """Resolutions are kept per name: the same relative name in another working directory is
    another file."""
    from sqlite_lockprobe.probe.tracer import database_path

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    assert database_path("app.db", False) == str((first / "app.db").resolve())
    # The same text with and without uri=True names two files.
    assert database_path("file:app.db", True) == str((first / "app.db").resolve())
    assert database_path("file:app.db", False) == str((first / "file:app.db").resolve())
    monkeypatch.chdir(second)
    assert database_path("app.db", False) == str((second / "app.db").resolve())
    monkeypatch.chdir(first)
    assert database_path("app.db", False) == str((first / "app.db").resolve())
    # The same text with and without uri=True names two files.
    assert database_path("file:app.db", True) == str((first / "app.db").resolve())
    assert database_path("file:app.db", False) == str((first / "file:app.db").resolve())


def test_read_header_tells_wal_from_rollback_without_opening_the_database(tmp_path) -> None:
    import sqlite3

    from sqlite_lockprobe.probe.tracer import read_header

    wal, rollback = tmp_path / "wal.db", tmp_path / "rollback.db"
    for path, mode in ((wal, "WAL"), (rollback, "DELETE")):
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("CREATE TABLE t (x)")
        conn.close()
    assert read_header(str(wal)) == ("wal", 4096)
    assert read_header(str(rollback)) == ("delete", 4096)
    assert read_header(str(tmp_path / "missing.db")) == (None, None)
    (tmp_path / "empty.db").write_bytes(b"")
    assert read_header(str(tmp_path / "empty.db")) == (None, None)


def test_call_sites_skip_libraries_and_generated_code_but_not_the_users_scripts() -> None:
    from sqlite_lockprobe.probe.callsite import LIBRARY, SKIP, USER, CallSites

    sites = CallSites(("/opt/lockprobe/sqlite_lockprobe/",), cwd="/srv/app/")
    site = "/venv/lib/python3.11/site-packages"
    cases = {
        "/srv/app/views.py": (USER, "views.py"),
        "/home/me/other/job.py": (USER, "/home/me/other/job.py"),
        "<string>": (USER, "<string>"),
        f"{site}/django/db/models/query.py": (LIBRARY, "django/db/models/query.py"),
        f"{site}/django/contrib/sessions/backends/db.py": (
            USER,
            "django/contrib/sessions/backends/db.py",
        ),
        # A framework's decorators and wrappers are library frames too.
        f"{site}/django/utils/asyncio.py": (LIBRARY, "django/utils/asyncio.py"),
        f"{site}/starlette/concurrency.py": (LIBRARY, "starlette/concurrency.py"),
        f"{site}/sqlalchemy/orm/session.py": (LIBRARY, "sqlalchemy/orm/session.py"),
        "<sqlalchemy generated warned() wrapper for Session._flush>": (
            LIBRARY,
            "<sqlalchemy generated warned() wrapper for Session._flush>",
        ),
        f"{site}/aiosqlite/core.py": (LIBRARY, "aiosqlite/core.py"),
        sites.stdlib + "threading.py": (LIBRARY, sites.stdlib + "threading.py"),
        "/opt/lockprobe/sqlite_lockprobe/probe/tracer.py": (
            SKIP,
            "/opt/lockprobe/sqlite_lockprobe/probe/tracer.py",
        ),
    }
    for filename, expected in cases.items():
        assert sites._classify(filename) == expected, filename
