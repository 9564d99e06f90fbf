"""The trace probe's compiled fast path (sqlite_lockprobe.probe._speedups) and its pure-Python twin
(traced.py) record the same events for the same program, leave results and exceptions the
program's own, take calls of any shape, and the report says which one ran.

Real programs under the real CLI, each run twice: as built, and with LOCKPROBE_PURE_PYTHON=1.
When the extension is not built for this Python these tests skip, unless
LOCKPROBE_REQUIRE_SPEEDUPS=1 (CI), when they fail. Runs on every supported CPython (`probe`
marker): the extension is compiled for each."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.statements import same_statements
from tests.test_trace import (
    SAFETY_TIMEOUT,
    Traced,
    line_of,
    lockprobe_trace,
    trace_python,
    write_program,
)

pytestmark = pytest.mark.probe

PURE = "LOCKPROBE_PURE_PYTHON"
PATHS = ("compiled", "python")


def environment(path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PURE}
    if path == "python":
        env[PURE] = "1"
    return env


@pytest.fixture(scope="module")
def probe_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(directory, probe path) of the sqlite_lockprobe a traced program loads: the one
    `python -m sqlite_lockprobe` runs from outside the checkout (the tests may import the
    checkout's own, which CI does not build)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE_PACKAGE],
        capture_output=True,
        text=True,
        env=environment("compiled"),
        cwd=tmp_path_factory.mktemp("probe-package"),
        timeout=SAFETY_TIMEOUT,
        check=True,
    )
    directory, path = out.stdout.split()
    return Path(directory), path


PROBE_PACKAGE = """
import os, sqlite_lockprobe.probe.traced as traced
print(os.path.dirname(traced.__file__), traced.PROBE_PATH)
"""


@pytest.fixture(scope="module")
def compiled(probe_package: tuple[Path, str]) -> None:
    """Skip when the probe a traced program loads has no compiled path for this Python; fail
    instead under LOCKPROBE_REQUIRE_SPEEDUPS=1."""
    if probe_package[1] != "compiled":
        why = f"sqlite_lockprobe.probe._speedups is not built for Python {sys.version.split()[0]}"
        if os.environ.get("LOCKPROBE_REQUIRE_SPEEDUPS") == "1":
            pytest.fail(f"{why} (LOCKPROBE_REQUIRE_SPEEDUPS=1)")
        pytest.skip(why)


def trace_both(tmp_path: Path, source: str, *args: str) -> Iterator[tuple[str, Traced]]:
    """The program traced once per path, each in its own directory."""
    for path in PATHS:
        workdir = tmp_path / path
        workdir.mkdir()
        traced = trace_python(workdir, "prog.py", source, *args, env=environment(path))
        assert traced.proc.returncode == 0, (path, traced.proc.stderr)
        yield path, traced


# One program through every path a call takes: short records (the same thread again, another
# thread, asyncio tasks), transactions begun implicitly and explicitly, cursors, executemany,
# executescript, with-blocks, a failure, SQL the probe follows (journal_mode, busy_timeout), a
# busy wait (a real lock held by another connection until the waiter is seen waiting), and a
# call made after close. A SQL text's first call is classified on the Python path (sql_bits):
# the session runs twice, so that its second round makes the same calls on the compiled one.
EVERY_PATH = """
import asyncio, os, sqlite3, sys, threading, time
# No call counts as long here (a long call is named by its own line, and which calls take
# over a millisecond depends on the machine's load); the budget's test has a long one.
sys.modules["sqlite_lockprobe.probe.tracer"].LONG_CALL_NS = 10**15
from sqlite_lockprobe.events.eventfile import read_event_file

DB = sys.argv[1]
INSERT = "INSERT INTO t (v) VALUES (?)"


def session(conn, base):
    conn.execute(INSERT, (base + 1,))  # MARK: implicit begin
    conn.execute(INSERT, (base + 2,))
    conn.commit()
    conn.executemany(INSERT, [(base + 3,), (base + 4,)])
    conn.rollback()
    with conn:
        conn.execute(INSERT, (base + 5,))
    try:
        conn.execute(INSERT, (base + 5,))
    except sqlite3.IntegrityError as exc:
        print("failed:", exc)
    conn.rollback()
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")  # MARK: explicit begin
    cur.executemany("UPDATE t SET v = v + 1000 WHERE v = ?", [(base + 1,), (base + 2,)])
    print(cur.execute("SELECT v FROM t ORDER BY id").fetchall())
    conn.commit()
    conn.executescript("SELECT 1; SELECT 2;")
    print("busy_timeout", conn.execute("PRAGMA busy_timeout").fetchone()[0])
    conn.execute("PRAGMA busy_timeout = 2000")
    for i in range(5):
        conn.execute("SELECT ?", (i,)).fetchone()


conn = sqlite3.connect(DB, check_same_thread=False)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v UNIQUE)")
session(conn, 0)
session(conn, 100)


def on_the_shared_connection():
    conn.execute("SELECT count(*) FROM t").fetchone()  # another thread: its own record key


def own_connection():
    mine = sqlite3.connect(DB)
    mine.execute(INSERT, (threading.current_thread().name,))
    mine.commit()
    mine.close()


for n, target in enumerate((on_the_shared_connection, own_connection, own_connection)):
    thread = threading.Thread(target=target, name=f"worker-{n}")
    thread.start()
    thread.join()
conn.execute("SELECT 1")  # the main thread again, outside an event loop


async def task(name):
    mine = sqlite3.connect(DB)
    mine.execute("SELECT count(*) FROM t").fetchone()
    await asyncio.sleep(0)
    mine.execute(INSERT, (name,))
    mine.commit()
    mine.close()


async def main():
    conn.execute("SELECT 1")  # the same thread, now in a task: the task's own record key
    await asyncio.gather(
        asyncio.create_task(task("a"), name="task_a"), asyncio.create_task(task("b"), name="task_b")
    )


asyncio.run(main())

holder = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
holder.execute("BEGIN IMMEDIATE")
holder.execute(INSERT, ("held",))


def commit_once_the_waiter_waits():
    trace_dir = os.environ["LOCKPROBE_TRACE_DIR"]  # its busy events, as they are flushed
    while not any(e["k"] == "busy" for name in os.listdir(trace_dir)
                  for e in read_event_file(os.path.join(trace_dir, name))):
        time.sleep(0.01)
    holder.execute("COMMIT")


releaser = threading.Thread(target=commit_once_the_waiter_waits)
releaser.start()
waiter = sqlite3.connect(DB, timeout=60)
waiter.execute(INSERT, ("waited",))  # MARK: waits
waiter.commit()
releaser.join()
conn.close()
try:
    conn.execute("SELECT 1")
except sqlite3.ProgrammingError as exc:
    print("closed:", exc)
"""


def comparable(traced: Traced) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The call and worker events without what differs between two runs of one program: times,
    pids (in connection ids too), native thread ids (numbered by first appearance), and how
    many times a wait was retried (whether it waited stays)."""
    threads: dict[int, int] = {}
    calls = []
    for e in traced.events:
        if e["k"] != "call":
            continue
        pid, _, number = e["conn"].partition(".")
        thread = threads.setdefault(e["thread"], len(threads))
        calls.append(
            (
                number, e["worker"], thread, e["task"], e["op"], e["sql"], tuple(e["stmts"]),
                e["busy"] > 0, e["err"], e["ext"], e["msg"], e["in_txn"], e["site"],
                e.get("folded", 0),
            )
        )  # fmt: skip
    workers = [
        (e["worker"], e["group"], e["kind"], e["task"]) for e in traced.events if e["k"] == "worker"
    ]
    return calls, workers


def test_both_paths_record_the_same_events_for_the_same_program(tmp_path, compiled) -> None:
    runs = dict(trace_both(tmp_path, EVERY_PATH, "app.db"))
    for path, traced in runs.items():
        assert traced.report["trace"]["probe_path"] == path
        assert {e["probe_path"] for e in traced.events if e["k"] == "meta"} == {path}
    (c_calls, c_workers), (p_calls, p_workers) = (comparable(runs[p]) for p in PATHS)
    assert len(c_calls) == len(p_calls)
    for c_call, p_call in zip(c_calls, p_calls, strict=True):
        c_stmts, p_stmts = c_call[6], p_call[6]
        assert c_call[:6] + c_call[7:] == p_call[:6] + p_call[7:]
        assert same_statements(c_stmts, p_stmts), (c_stmts, p_stmts)
    assert c_workers == p_workers
    own_output = [r.proc.stdout.partition("closed:")[0] for r in runs.values()]
    assert own_output[0] == own_output[1] and "busy_timeout 5000" in own_output[0]
    # What was compared is what the program did: the paths a call takes were all taken.
    ops = {(c[4], c[5]) for c in c_calls}
    assert ("executescript", "SELECT 1; SELECT 2;") in ops and ("rollback", "ROLLBACK") in ops
    workers = {c[1] for c in c_calls}
    assert workers >= {"MainThread", "worker-0", "worker-2", "Task-1", "task_a", "task_b"}
    assert sum(c[8] == 19 for c in c_calls) == 2  # the IntegrityError, in both rounds
    (waited,) = [c for c in c_calls if c[7]]
    assert waited[5] == "INSERT INTO t (v) VALUES (?)"
    # The compiled hook keeps no parameter value; sqlite3's own hook expands them.
    assert waited[6][-1] == "INSERT INTO t (v) VALUES (?)"
    (p_waited,) = [c for c in p_calls if c[7]]
    assert p_waited[6][-1].endswith("('waited')")
    assert waited[12] == f"prog.py:{line_of(EVERY_PATH, 'waits')} <module>"

    def site(mark: str) -> str:
        return f"prog.py:{line_of(EVERY_PATH, mark)} session"

    updates = [c[12] for c in c_calls if c[5].startswith("UPDATE t SET")]
    assert updates == [site("explicit begin")] * 2
    inserts = [
        c
        for c in c_calls
        if c[1] == "MainThread" and c[4] == "execute" and c[5] == ("INSERT INTO t (v) VALUES (?)")
    ]
    assert [c[12] for c in inserts][:2] == [site("implicit begin")] * 2


# Ctrl-C while a call waits for a lock: the probe ends the wait and the call raises the
# KeyboardInterrupt, chained to the SQLite error that ending the wait produced.
INTERRUPTED = """
import os, signal, sqlite3, sys, threading, time
from sqlite_lockprobe.events.eventfile import read_event_file

holder = sqlite3.connect(sys.argv[1], isolation_level=None)
holder.execute("CREATE TABLE t (x)")
waiter = sqlite3.connect(sys.argv[1], timeout=600)
waiter.execute("INSERT INTO t VALUES (1)")  # its SQL classified: the next call is a fast one
waiter.commit()
holder.execute("BEGIN IMMEDIATE")


def interrupt_once_waiting():
    trace_dir = os.environ["LOCKPROBE_TRACE_DIR"]
    while not any(e["k"] == "busy" for name in os.listdir(trace_dir)
                  for e in read_event_file(os.path.join(trace_dir, name))):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)


threading.Thread(target=interrupt_once_waiting, daemon=True).start()
try:
    waiter.execute("INSERT INTO t VALUES (1)")  # MARK: interrupted
except KeyboardInterrupt as exc:
    print("interrupted:", type(exc).__name__, "after", type(exc.__context__).__name__)
"""


def test_ctrl_c_during_a_wait_is_raised_the_same_way_on_both_paths(tmp_path, compiled) -> None:
    runs = dict(trace_both(tmp_path, INTERRUPTED, "app.db"))
    for path, traced in runs.items():
        assert "interrupted: KeyboardInterrupt after OperationalError" in traced.proc.stdout, path
        (call,) = [e for e in traced.events if e["k"] == "call" and e["msg"]]
        assert call["msg"].startswith("KeyboardInterrupt"), path
        assert call["site"] == f"prog.py:{line_of(INTERRUPTED, 'interrupted')} <module>"


# The program's own objects: results are what sqlite3 returned, exceptions are what sqlite3 (or
# the program's own connection class) raised, chained and with the traceback as untraced.
OWN_OBJECTS = """
import sqlite3, sys, traceback

SENTINEL, REFUSED = object(), RuntimeError("refused by the program's own commit")


class Conn(sqlite3.Connection):
    refuse = False

    def commit(self):
        if Conn.refuse:
            raise REFUSED
        super().commit()
        return SENTINEL


conn = sqlite3.connect(sys.argv[1], factory=Conn)
cur = conn.cursor()
print("cursor.execute returns the cursor:", cur.execute("CREATE TABLE t (x UNIQUE)") is cur)
print("executescript returns a cursor:", type(conn.executescript("SELECT 1")).__name__)
conn.execute("INSERT INTO t VALUES (1)")
print("commit's own result:", conn.commit() is SENTINEL)
Conn.refuse = True
try:
    conn.commit()
except RuntimeError as exc:
    print("commit's own exception:", exc is REFUSED)
outer = LookupError("the program's own, being handled")
try:
    try:
        raise outer
    except LookupError:
        conn.execute("INSERT INTO t VALUES (1)")  # committed above: UNIQUE fails
except sqlite3.IntegrityError as exc:
    print("chained to what was handled:", exc.__context__ is outer, exc)
    frames = traceback.extract_tb(exc.__traceback__)
    print("traceback:", [(f.name, f.lineno) for f in frames if f.filename == __file__],
          "frames elsewhere:", sum(f.filename != __file__ for f in frames))
"""


def test_results_and_exceptions_are_the_programs_own_objects(tmp_path, compiled) -> None:
    program = write_program(tmp_path, "own.py", OWN_OBJECTS)
    untraced = subprocess.run(
        [sys.executable, str(program), str(tmp_path / "untraced.db")],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        check=True,
    ).stdout
    assert "True" in untraced and "False" not in untraced
    *lines, frames = untraced.splitlines()
    assert frames.endswith("frames elsewhere: 0")
    runs = dict(trace_both(tmp_path, OWN_OBJECTS, "app.db"))
    for path, traced in runs.items():
        *traced_lines, traced_frames = traced.proc.stdout.splitlines()[: len(lines) + 1]
        assert traced_lines == lines, path
        # The program's own frames, as untraced...
        assert (
            traced_frames.partition(" frames elsewhere")[0]
            == frames.partition(" frames elsewhere")[0]
        )
    # ...and the compiled path adds none of lockprobe's (the Python path adds its wrapper's).
    assert runs["compiled"].proc.stdout.startswith(untraced)


# Calls of shapes sqlite3's methods do not take fail as untraced (TypeError); the others work,
# through the class, a bound method kept aside, functools.partial.
ODD_SHAPES = """
import functools, sqlite3, sys

conn = sqlite3.connect(sys.argv[1])
conn.execute("CREATE TABLE t (x)")
cur = conn.cursor()
closed = sqlite3.connect(sys.argv[1])
closed.close()


class Cur(sqlite3.Cursor):
    pass


calls = {
    "keyword sql": lambda: conn.execute(sql="SELECT 1"),
    "keyword parameters": lambda: cur.execute("SELECT ?", parameters=(1,)),
    "three arguments": lambda: conn.execute("SELECT ?", (1,), 3),
    "no argument": lambda: conn.execute(),
    "executescript keyword": lambda: conn.executescript(sql_script="SELECT 1"),
    "commit with an argument": lambda: conn.commit(1),
    "rollback with a keyword": lambda: conn.rollback(now=True),
    "sql not a str": lambda: conn.execute(b"SELECT 1"),
    "sql not hashable": lambda: conn.execute(["SELECT 1"]),
    "through the class": lambda: type(conn).execute(conn, "SELECT 2").fetchone(),
    "bound method kept": lambda: functools.partial(conn.execute, "SELECT ?")((3,)).fetchone(),
    "named parameters": lambda: conn.execute("SELECT :a", {"a": 4}).fetchone(),
    "executemany generator": lambda: conn.executemany(
        "INSERT INTO t VALUES (?)", ((i,) for i in range(3))).rowcount,
    "cursor through the class": lambda: type(cur).execute(cur, "SELECT 5").fetchone(),
    "commit through the class": lambda: type(conn).commit(conn),
    "cursor of a factory": lambda: conn.cursor(factory=Cur).execute("SELECT 6").fetchone(),
    "cursor of that factory again": lambda: conn.cursor(factory=Cur).execute("SELECT 6").fetchone(),
    "cursor of a factory by position": lambda: conn.cursor(Cur).execute("SELECT 7").fetchone(),
    "cursor of a factory function": lambda: type(conn.cursor(lambda c: Cur(c))).__name__,
    "cursor of a factory not callable": lambda: conn.cursor(factory=[1]),
    "cursor with another keyword": lambda: conn.cursor(kind=Cur),
    "cursor with two arguments": lambda: conn.cursor(Cur, 2),
    "cursor of a closed connection": lambda: closed.cursor(),
}
for name, call in calls.items():
    try:
        print(name, "->", repr(call()))
    except Exception as exc:
        print(name, "-> raised", type(exc).__name__)
        print("   ", exc)
"""


def test_calls_of_any_shape_behave_as_untraced(tmp_path, compiled) -> None:
    program = write_program(tmp_path, "odd.py", ODD_SHAPES)
    untraced = subprocess.run(
        [sys.executable, str(program), str(tmp_path / "untraced.db")],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        check=True,
    ).stdout
    results = [line for line in untraced.splitlines() if "->" in line]
    assert sum("raised TypeError" in line for line in results) == 12
    runs = dict(trace_both(tmp_path, ODD_SHAPES, "app.db"))
    for path, traced in runs.items():
        out = traced.proc.stdout.splitlines()
        # What each call returned or raised (type) is the same on both paths...
        assert [line for line in out if "->" in line] == results, path
    # ...and the compiled one hands a shape it does not take to sqlite3 itself: its message too.
    assert runs["compiled"].proc.stdout.startswith(untraced)
    recorded = {e["sql"] for e in runs["compiled"].events if e["k"] == "call"}
    assert {"SELECT 2", "SELECT ?", "SELECT :a", "SELECT 5", "SELECT 6", "SELECT 7", "COMMIT"} <= (
        recorded
    )
    # A factory's second cursor is made by the compiled cursor() and its calls recorded too.
    sixes = [e for e in runs["compiled"].events if e["k"] == "call" and e["sql"] == "SELECT 6"]
    assert len(sixes) == 2


def test_the_terminal_report_says_which_probe_path_ran(tmp_path, compiled) -> None:
    source = """
    import sqlite3, sys
    sqlite3.connect(sys.argv[1]).execute("CREATE TABLE t (x)")
    """
    words = {"compiled": r"compiled \(C fast path\)", "python": "pure Python"}
    for path, traced in trace_both(tmp_path, source, "app.db"):
        assert re.search(rf"^probe +{words[path]} *$", traced.proc.stdout, re.M), traced.proc.stdout


# A traced program whose interpreter cannot load the extension (a wheel built for another
# Python, or no compiler at install time) takes the Python path: its import fails, handled.
NO_EXTENSION = """
import sys


class NoSpeedups:
    def find_spec(self, name, path=None, target=None):
        if name == "sqlite_lockprobe.probe._speedups":
            raise ImportError("not built for this interpreter")


sys.meta_path.insert(0, NoSpeedups())
import sqlite3
conn = sqlite3.connect(sys.argv[1])
conn.execute("CREATE TABLE t (x)")
conn.execute("INSERT INTO t VALUES (1)")
conn.commit()
print(type(type(conn).__dict__["execute"]).__name__)
"""


def test_a_program_that_cannot_load_the_extension_is_traced_on_the_python_path(
    tmp_path,
) -> None:
    traced = trace_python(tmp_path, "prog.py", NO_EXTENSION, "app.db", env=environment("compiled"))
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.proc.stdout.startswith("function\n")
    assert traced.report["trace"]["probe_path"] == "python"
    assert [e["sql"] for e in traced.events if e["k"] == "call"] == [
        "CREATE TABLE t (x)",
        "INSERT INTO t VALUES (1)",
        "COMMIT",
    ]


def other_python(package: Path) -> str | None:
    """Another supported CPython on this machine whose build of the extension is not in the
    package the probe loads from: a traced program on it cannot load the one there is."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for minor in ("3.10", "3.11", "3.12", "3.13"):
        if sys.version.startswith(minor + ".") or glob.glob(
            str(package / f"_speedups.cpython-{minor.replace('.', '')}*")
        ):
            continue
        found = [*glob.glob(f"{pyenv}/{minor}.*/bin/python{minor}"), shutil.which(f"python{minor}")]
        for candidate in found:
            works = candidate and subprocess.run(
                [candidate, "-c", "import sqlite3, ctypes"], capture_output=True, check=False
            )  # a pyenv shim may name a version that is not selected
            if works and works.returncode == 0:
                return candidate
    return None


def test_a_child_on_another_python_takes_the_python_path_and_the_report_says_mixed(
    tmp_path, compiled, probe_package
) -> None:
    python = other_python(probe_package[0])
    if python is None:
        pytest.skip("no other CPython 3.10-3.13 without a build of the extension here")
    source = """
    import sqlite3, subprocess, sys
    conn = sqlite3.connect(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    child = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('INSERT INTO t VALUES (1)')"
    subprocess.run([sys.argv[2], "-c", child, sys.argv[1]], check=True)
    """
    program = write_program(tmp_path, "prog.py", source)
    traced = lockprobe_trace(
        tmp_path, sys.executable, program.name, "app.db", python, env=environment("compiled")
    )
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert "lockprobe:" not in traced.proc.stderr  # the child's probe did not fail: it fell back
    assert traced.report["trace"]["probe_path"] == "mixed"
    paths = {e["pid"]: e["probe_path"] for e in traced.events if e["k"] == "meta"}
    assert sorted(paths.values()) == ["compiled", "python"]
    calls = {e["sql"]: e["conn"] for e in traced.events if e["k"] == "call"}
    assert set(calls) == {"CREATE TABLE t (x)", "COMMIT", "INSERT INTO t VALUES (1)"}
    assert re.search(r"^probe +mixed: compiled in 1, python in 1 *$", traced.proc.stdout, re.M)


# Threads that each make thousands of short calls, with calls recorded in full (PRAGMA) and busy
# waits between them: the compiled path keeps its short records in C and the flusher writes
# them as packed chunks, between the marshalled events Python appended.
MANY_CALLS = """
import sqlite3, sys, threading

DB, PER_THREAD = sys.argv[1], int(sys.argv[2])
setup = sqlite3.connect(DB, isolation_level=None)
setup.execute("PRAGMA journal_mode=WAL")
setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
setup.close()
start = threading.Barrier(3)


def work():
    conn = sqlite3.connect(DB, isolation_level=None, timeout=60)
    start.wait()
    for i in range(PER_THREAD):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        conn.execute("COMMIT")
        if i % 500 == 0:
            conn.execute("PRAGMA busy_timeout = 60000")  # recorded in full, by Python
    conn.close()


threads = [threading.Thread(target=work, name=f"writer-{k}") for k in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def chunk_kinds(path: Path) -> list[str]:
    """'packed' or 'marshal' for each whole chunk of an event file, in order."""
    from sqlite_lockprobe.events.eventfile import PACKED_MAGIC

    data, offset, kinds = path.read_bytes(), 0, []
    while offset + 8 <= len(data):
        end = offset + 8 + int.from_bytes(data[offset : offset + 8], "little")
        if end > len(data):
            break
        kinds.append("packed" if data.startswith(PACKED_MAGIC, offset + 8) else "marshal")
        offset = end
    return kinds


@pytest.mark.parametrize("path", PATHS)
def test_short_records_kept_in_c_are_written_packed_and_read_back_whole(
    tmp_path, compiled, path: str
) -> None:
    from sqlite_lockprobe.events.eventfile import read_event_file
    from sqlite_lockprobe.sources.trace import trace_environment

    per_thread = 3_000
    program = write_program(tmp_path, "many.py", MANY_CALLS)
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    argv = [sys.executable, program.name, "app.db", str(per_thread)]
    env = trace_environment(str(trace_dir), argv, None, environment(path))
    proc = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SAFETY_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    (events_file,) = trace_dir.glob("events-*.lpk")
    kinds = chunk_kinds(events_file)
    if path == "compiled":
        assert kinds.count("packed") >= 1 and kinds.count("marshal") >= 1
    else:
        assert set(kinds) == {"marshal"}

    events = list(read_event_file(events_file))
    calls: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["k"] == "call":
            calls.setdefault(e["worker"], []).append(e)
    writers = {f"writer-{k}" for k in range(3)}
    assert set(calls) >= writers
    for writer in writers:
        mine = calls[writer]
        sqls = [c["sql"] for c in mine]
        assert sqls.count("INSERT INTO t (v) VALUES (?)") == per_thread
        assert sqls.count("COMMIT") == per_thread
        assert sqls.count("PRAGMA busy_timeout = 60000") == per_thread // 500
        assert len(mine) == 3 * per_thread + per_thread // 500
        # In the order they were made, each with what it ran (its own SQL, not a neighbour's).
        assert [c["t0"] for c in mine] == sorted(c["t0"] for c in mine)
        inserts = [c["stmts"] for c in mine if c["sql"].startswith("INSERT")]
        assert all(len(s) == 1 and s[0].startswith("INSERT INTO t (v) VALUES (") for s in inserts)

    # A process killed mid-write leaves a torn last chunk: what comes before it reads whole.
    data = events_file.read_bytes()
    torn = tmp_path / "torn.lpk"
    torn.write_bytes(data[: len(data) - 10])
    before = list(read_event_file(torn))
    assert 0 < len(before) < len(events) and before == events[: len(before)]
