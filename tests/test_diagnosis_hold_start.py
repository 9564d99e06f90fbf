"""End to end: under `lockprobe trace`, a reader that waited behind a COMMIT's PENDING lock
holds SHARED only from its last busy-handler retry, as the probe recorded it.

Contention is lined up by conditions, never by sleeps: the program goes on only once the
writer's COMMIT, then the late reader's SELECT, is seen inside the busy handler (a thread's
current frames include the probe's busy callback while SQLite waits)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sqlite_lockprobe.diagnose.chain import blockers
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.events.records import read_events

pytestmark = pytest.mark.probe

SAFETY_TIMEOUT = 120  # seconds: a hung test fails instead of hanging CI; never an assertion

READER_BEHIND_PENDING = """
import sqlite3
import sys
import threading

DB = sys.argv[1]
setup = sqlite3.connect(DB)
setup.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
setup.commit()
setup.close()


def in_busy_handler(thread):
    # While SQLite waits, the thread runs the probe's busy callback (probe.py, _on_busy).
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "_on_busy":
            return True
        frame = frame.f_back
    return False


def wait_until_waiting(thread):
    tick = threading.Event()
    while not in_busy_handler(thread):
        if not thread.is_alive():
            sys.exit(f"{thread.name} ended before it was seen waiting")
        tick.wait(0.001)


r1 = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
r1.execute("BEGIN")
r1.execute("SELECT count(*) FROM t").fetchall()  # holds SHARED until its COMMIT below


def writer():
    w = sqlite3.connect(DB, isolation_level=None)
    w.execute("BEGIN IMMEDIATE")
    w.execute("INSERT INTO t (v) VALUES (1)")
    w.execute("COMMIT")  # takes PENDING, waits for r1's SHARED
    w.close()


def late_reader():
    r2 = sqlite3.connect(DB, isolation_level=None)
    r2.execute("SELECT count(*) FROM t").fetchall()  # waits behind the writer's PENDING
    r2.close()


w = threading.Thread(target=writer, name="writer")
w.start()
wait_until_waiting(w)
r2 = threading.Thread(target=late_reader, name="late_reader")
r2.start()
wait_until_waiting(r2)
r1.execute("COMMIT")
w.join()
r2.join()
r1.close()
"""


def test_a_reader_that_waited_behind_pending_holds_shared_only_after_its_last_retry(
    tmp_path: Path,
) -> None:
    program = tmp_path / "readers.py"
    program.write_text(textwrap.dedent(READER_BEHIND_PENDING).lstrip("\n"))
    events_file = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--events", str(events_file)]
        + ["--", sys.executable, program.name, "app.db"],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    events = list(read_events(events_file))
    timeline = build_timeline(events)
    [commit] = [w for w in timeline.waits if w.waiter.worker == "writer"]
    [select] = [w for w in timeline.waits if w.waiter.worker == "late_reader"]
    retries = [e["t"] for e in events if e["k"] == "busy" and e["conn"] == select.waiter.conn]
    assert retries and select.handler_calls == len(retries)
    [late] = [h for h in timeline.read_holds if h.holder.worker == "late_reader"]
    # Granted at the retry after its last busy-handler call: nothing was held while waiting.
    assert late.t0 > max(retries) > select.t0
    assert late.own_wait_ns == 0
    # The COMMIT waited for the SHARED lock r1 really held.
    assert blockers(commit, timeline)[0].holder.worker == "MainThread"
