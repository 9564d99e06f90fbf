"""The summary table of `lockprobe trace`: every call counted in the group of the worker that
made it (thread, asyncio task, process), the total the sum of the groups, and aiosqlite's
driver threads folded into the tasks they run calls for. A real program with known counts runs
under the real CLI; its transactions are serialised by locks and events, so every count is
known in advance (only durations are not asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.test_trace import signal_when_ready, trace_python

pytestmark = pytest.mark.probe

SAFETY_TIMEOUT = 120  # seconds: a hung test fails instead of hanging CI; never an assertion
TRANSACTIONS = 5  # per writer thread

KNOWN_COUNTS = """
import asyncio
import sqlite3
import sys
import threading

import aiosqlite

DB, TRANSACTIONS = sys.argv[1], int(sys.argv[2])

setup = sqlite3.connect(DB, isolation_level=None)
setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")  # MainThread: 1 call, 1 commit
setup.close()

one_at_a_time = threading.Lock()  # no writer ever waits for another: no busy wait


def writer():
    conn = sqlite3.connect(DB, isolation_level=None)
    for i in range(TRANSACTIONS):
        with one_at_a_time:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
            conn.execute("COMMIT")
    conn.close()


threads = [threading.Thread(target=writer, name=f"writer-{n}") for n in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()

holding, release = threading.Event(), threading.Event()


def holder():
    conn = sqlite3.connect(DB, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    holding.set()
    release.wait()
    conn.execute("ROLLBACK")
    conn.close()


async def job(one_task_at_a_time):
    async with aiosqlite.connect(DB) as db:
        for i in range(2):
            async with one_task_at_a_time:
                await db.execute("INSERT INTO t (v) VALUES (?)", (i,))
                await db.commit()


async def victim():
    async with aiosqlite.connect(DB, timeout=0) as db:
        await asyncio.to_thread(holding.wait)
        try:
            await db.execute("INSERT INTO t (v) VALUES (-1)")  # SQLITE_BUSY at once
        except sqlite3.OperationalError as exc:
            print("victim:", exc)
        await db.rollback()
        release.set()


async def main():
    lock = asyncio.Lock()
    await asyncio.gather(*(asyncio.create_task(job(lock), name=f"job-{n}") for n in range(2)))
    holding_thread = threading.Thread(target=holder, name="holder")
    holding_thread.start()
    await asyncio.create_task(victim(), name="victim")
    holding_thread.join()


asyncio.run(main())
"""

# (group, kind, workers, calls, commits, rollbacks, errors, busy_errors, handler_calls, waits)
EXPECTED_GROUPS = [
    ("MainThread", "thread", 1, 1, 1, 0, {}, 0, 0, 0),
    ("holder", "thread", 1, 2, 0, 1, {}, 0, 0, 0),
    ("job", "coroutine", 2, 8, 4, 0, {}, 0, 0, 0),
    ("victim", "coroutine", 1, 2, 0, 1, {"SQLITE_BUSY (5)": 1}, 1, 1, 1),
    ("writer", "thread", 3, 9 * TRANSACTIONS, 3 * TRANSACTIONS, 0, {}, 0, 0, 0),
]


def trace_program(tmp_path: Path, source: str, *args: str) -> tuple[Any, dict[str, Any]]:
    """The program traced with a wide terminal (every column of the tables whole)."""
    traced = trace_python(tmp_path, "prog.py", source, *args, env={**os.environ, "COLUMNS": "200"})
    return traced.proc, traced.report


def group_row(group: dict[str, Any]) -> tuple[Any, ...]:
    return (
        group["group"],
        group["kind"],
        group["workers"],
        group["calls"],
        group["commits"],
        group["rollbacks"],
        group["errors"],
        group["busy_errors"],
        group["handler_calls"],
        group["waits"]["count"],
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows as printed: first column -> the other cells."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^\s+(\S.*?\(\d+(?: \w+)?\))\s+(\d.*)$", line)
        if match:
            rows[match.group(1)] = match.group(2).split()
    return rows


def test_every_call_is_counted_in_its_workers_group_and_the_total_is_their_sum(
    tmp_path,
) -> None:
    pytest.importorskip("aiosqlite")
    proc, report = trace_program(tmp_path, KNOWN_COUNTS, "app.db", str(TRANSACTIONS))
    assert proc.returncode == 0, proc.stderr
    assert "victim: database is locked" in proc.stdout
    summary = report["summary"]
    assert [group_row(g) for g in summary["groups"]] == EXPECTED_GROUPS

    total = summary["total"]
    assert total["group"] == "all" and total["kind"] == ""
    for key in ("workers", "calls", "commits", "rollbacks", "busy_errors", "handler_calls"):
        assert total[key] == sum(g[key] for g in summary["groups"]), key
    assert total["errors"] == {"SQLITE_BUSY (5)": 1}
    assert total["waits"]["count"] == 1
    # One wait in all: the victim's, so its numbers are the total's.
    [victim] = [g for g in summary["groups"] if g["group"] == "victim"]
    assert victim["waits"] == total["waits"]

    rows = table_rows(proc.stdout)
    # group (workers), calls, commits, rb, errors, waits, p50, p99, max, tx/s
    assert set(rows) == {
        "MainThread (1 thr)",
        "holder (1 thr)",
        "job (2 coro)",
        "victim (1 coro)",
        "writer (3 thr)",
        "all (8)",
    }, proc.stdout
    assert rows["MainThread (1 thr)"][:6] == ["1", "1", "0", "-", "0", "-"]
    assert rows["holder (1 thr)"][:6] == ["2", "0", "1", "-", "0", "-"]
    assert rows["job (2 coro)"][:6] == ["8", "4", "0", "-", "0", "-"]
    writer = [str(9 * TRANSACTIONS), str(3 * TRANSACTIONS), "0", "-", "0", "-"]
    assert rows["writer (3 thr)"][:6] == writer
    assert rows["victim (1 coro)"][:5] == ["2", "0", "1", "1", "BUSY"]
    assert rows["victim (1 coro)"][5] == "1"  # waits
    assert rows["all (8)"][:6] == [
        str(total["calls"]),
        str(total["commits"]),
        "2",
        "1",
        "BUSY",
        "1",
    ]
    # p50, p99 and max of the one wait: the same in the victim's row and in the total.
    assert rows["victim (1 coro)"][6:9] == rows["all (8)"][6:9]
    assert len(set(rows["victim (1 coro)"][6:9])) == 1


SHARED_CONNECTION = """
import sqlite3
import sys
import threading

# One connection, opened by the main thread and used by two threads in turn (a pool of one):
# each call belongs to the thread that made it, not to the connection's opener.
pool = sqlite3.connect(sys.argv[1], isolation_level=None, check_same_thread=False)
pool.execute("CREATE TABLE t (v INTEGER)")  # MainThread: 1 call, 1 commit


def work(transactions, finished):
    for i in range(transactions):
        pool.execute("BEGIN IMMEDIATE")  # the thread's first call comes before its worker event
        pool.execute("INSERT INTO t VALUES (?)", (i,))
        pool.execute("COMMIT")
    finished.set()


first_done = threading.Event()
first = threading.Thread(target=work, args=(2, first_done), name="alpha")
first.start()
first_done.wait()
second = threading.Thread(target=work, args=(1, threading.Event()), name="beta")
second.start()
first.join()
second.join()
pool.close()
"""


def test_a_connection_shared_by_threads_counts_each_call_for_the_thread_that_made_it(
    tmp_path,
) -> None:
    proc, report = trace_program(tmp_path, SHARED_CONNECTION, "app.db")
    assert proc.returncode == 0, proc.stderr
    summary = report["summary"]
    assert [group_row(g) for g in summary["groups"]] == [
        ("MainThread", "thread", 1, 1, 1, 0, {}, 0, 0, 0),
        ("alpha", "thread", 1, 6, 2, 0, {}, 0, 0, 0),
        ("beta", "thread", 1, 3, 1, 0, {}, 0, 0, 0),
    ]
    assert (summary["total"]["calls"], summary["total"]["commits"]) == (10, 4)


# ---------------------------------------------------------------- how the program ended


def test_sigterm_to_lockprobe_is_reported_as_sigterm_not_as_ctrl_c(tmp_path) -> None:
    import signal

    source = """
    import signal, sqlite3, sys, threading
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    conn.commit()

    def stop(signum, frame):
        print("program: got", signal.Signals(signum).name)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    open("ready", "w").close()
    threading.Event().wait()  # like a server: until it is told to stop
    """
    proc, out, err, report = signal_when_ready(tmp_path, "server.py", source, signal.SIGTERM)
    assert proc.returncode == 0, err  # the program's own exit code
    assert "program: got SIGTERM" in out
    assert "exited with code 0 after SIGTERM" in out
    assert "Ctrl-C" not in out
    data = json.loads(report.read_text())["trace"]
    assert data["received_signals"] == ["SIGTERM"]
    assert data["interrupted"] is True and data["exit_code"] == 0 and data["signal"] is None


# ------------------------------------------------------------------------- output files

STARTS = """
import sqlite3, sys
open("started", "w").close()
sqlite3.connect("app.db").execute("CREATE TABLE t (x)")
"""


def lockprobe(tmp_path: Path, *argv: str, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", *argv],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        cwd=tmp_path,
        **popen,
    )


@pytest.mark.parametrize("option", ["--json", "--html", "--events", "--timeline"])
def test_an_output_file_in_a_missing_directory_stops_trace_before_the_program_starts(
    tmp_path, option: str
) -> None:
    (tmp_path / "prog.py").write_text(textwrap.dedent(STARTS))
    proc = lockprobe(tmp_path, "trace", option, "missing/out.file", "--", sys.executable, "prog.py")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("lockprobe: ") and f"'{option}'" in proc.stderr
    assert "missing: no such directory" in proc.stderr
    assert not (tmp_path / "started").exists()  # the program never ran


@pytest.mark.parametrize("option", ["--json", "--events"])
def test_an_output_file_in_a_missing_directory_stops_run_before_it_starts(
    tmp_path, option: str
) -> None:
    proc = lockprobe(tmp_path, "run", "healthy", option, "missing/out.file")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "missing: no such directory" in proc.stderr


def test_an_output_file_that_cannot_be_written_at_the_end_still_gets_the_report(
    tmp_path,
) -> None:
    # The output directory is there when lockprobe starts, and the program removes it.
    out = tmp_path / "out"
    out.mkdir()
    source = """
    import shutil, sqlite3, sys
    conn = sqlite3.connect("app.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    shutil.rmtree(sys.argv[1])
    """
    (tmp_path / "prog.py").write_text(textwrap.dedent(source))
    proc = lockprobe(
        tmp_path,
        "trace",
        "--json",
        "out/report.json",
        "--events",
        "out/events.jsonl",
        "--html",
        "report.html",
        "--",
        sys.executable,
        "prog.py",
        str(out),
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 2
    assert "Diagnosis: no lock problems found" in proc.stdout  # the report is printed
    problems = proc.stderr.splitlines()
    assert len(problems) == 2, proc.stderr
    assert problems[0].startswith("lockprobe: cannot write event log out/events.jsonl")
    assert problems[1].startswith("lockprobe: cannot write out/report.json")
    assert "<!DOCTYPE html>" in (tmp_path / "report.html").read_text()  # the others are written


def test_report_files_are_created_with_the_users_umask(tmp_path) -> None:
    (tmp_path / "prog.py").write_text(textwrap.dedent(STARTS))
    names = ("report.json", "report.html", "timeline.json", "events.jsonl")
    (tmp_path / "report.html").write_text("an older report")
    (tmp_path / "report.html").chmod(0o604)  # a file replaced keeps its mode
    proc = lockprobe(
        tmp_path,
        "trace",
        "-q",
        "--json",
        names[0],
        "--html",
        names[1],
        "--timeline",
        names[2],
        "--events",
        names[3],
        "--",
        sys.executable,
        "prog.py",
        preexec_fn=lambda: os.umask(0o027),
    )
    assert proc.returncode == 0, proc.stderr
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in names}
    assert modes == {
        "report.json": 0o640,
        "report.html": 0o604,
        "timeline.json": 0o640,
        "events.jsonl": 0o640,
    }


def test_an_output_path_that_is_a_directory_or_under_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("")
    proc = lockprobe(tmp_path, "run", "healthy", "--json", "a-directory")
    assert proc.returncode == 2 and "a-directory: is a directory" in proc.stderr
    proc = lockprobe(tmp_path, "run", "healthy", "--html", "a-file/report.html")
    assert proc.returncode == 2 and "a-file: not a directory" in proc.stderr
