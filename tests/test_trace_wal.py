"""`lockprobe trace` sees the WAL: every traced process samples the -wal size and the WAL-index
header of each WAL database it has open (tracewal.py, on the event file's flusher tick), so
checkpoint starvation is found in the user's own program. End to end with the real CLI and
real threads and processes; contention lined up with events. A program waits for the probe
to have sampled by watching its own event file grow (the flusher samples, then writes).

The -shm descriptors are checked in this process: one that SQLite still uses is never closed
(that would drop the process's WAL locks), one whose file SQLite deleted is let go."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlite_lockprobe.diagnose.checkpoint_starvation import GROWTH_FACTOR
from sqlite_lockprobe.events.eventfile import EventFile, read_event_file
from sqlite_lockprobe.probe.tracewal import TraceWal
from tests.test_trace import SAFETY_TIMEOUT, Traced, line_of, lockprobe_trace, write_program

pytestmark = pytest.mark.probe

AUTOCHECKPOINT = 1000  # SQLite's default wal_autocheckpoint, which the programs keep
PAGE_SIZE = 512  # small pages: thousands of WAL frames in a few MB

WAIT_FOR_SAMPLES = """
def wait_for_samples(count):
    # The probe samples the WAL on its flusher's tick, then writes this process's event file:
    # each time the file grows, a tick has passed (with a sample: in WAL mode only).
    pattern = os.path.join(os.environ["LOCKPROBE_TRACE_DIR"], f"events-{os.getpid()}-*")

    def written():
        return sum(os.path.getsize(f) for f in glob.glob(pattern))

    deadline = time.monotonic() + 30  # a safety bound: a tick comes every 0.25 s
    for _ in range(count):
        before = written()
        while written() == before:
            if time.monotonic() > deadline:
                sys.exit("no WAL sample written")
            time.sleep(0.01)
"""

# Readers in relay: in each round a reader begins its read transaction before the previous
# one ends, so one is always open while the writer commits `COMMITS` transactions of about
# 157 frames, which pass wal_autocheckpoint every round (starved). Healthy: the same readers
# and writes, but each read transaction ends before the writer commits.
READERS_AND_WRITER = (
    """
import glob
import multiprocessing
import os
import sqlite3
import sys
import threading
import time

DB, MODE, KIND = sys.argv[1:4]
WAL = sqlite3.connect(DB).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
ROUNDS, COMMITS, ROWS = 4, 10, 150
if KIND == "processes":  # the readers in forked processes, which sample app.db too
    ctx = multiprocessing.get_context("fork")
    Event, Reader = ctx.Event, ctx.Process
else:
    Event, Reader = threading.Event, threading.Thread
begun = [Event() for _ in range(ROUNDS + 1)]
written = [Event() for _ in range(ROUNDS)]
"""
    + WAIT_FOR_SAMPLES
    + """

def reader(first):
    conn = sqlite3.connect(DB, isolation_level=None)
    for k in range(first, ROUNDS, 3):
        if k:
            written[k - 1].wait()
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchone()  # MARK: snapshot
        if MODE == "starved":
            begun[k].set()
            begun[k + 1].wait()  # the next reader has begun
            conn.execute("COMMIT")
        else:
            conn.execute("COMMIT")
            begun[k].set()
    conn.close()


def writer():
    conn = sqlite3.connect(DB, isolation_level=None)
    for k in range(ROUNDS):
        begun[k].wait()
        if k == 0 and WAL:
            wait_for_samples(1)  # one sample before the WAL grows
        for _ in range(COMMITS):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (body) VALUES (randomblob(400))", [()] * ROWS)
            conn.execute("COMMIT")
        if WAL:
            wait_for_samples(1 if k < ROUNDS - 1 else 2)
        written[k].set()
    begun[ROUNDS].set()
    conn.close()


readers = [Reader(target=reader, args=(i,), name=f"reader-{i}") for i in range(3)]
for r in readers:  # forked (if processes) before the writer's thread starts
    r.start()
writing = threading.Thread(target=writer, name="writer")
writing.start()
for t in [*readers, writing]:
    t.join()
print("rows", sqlite3.connect(DB).execute("SELECT count(*) FROM t").fetchone()[0])
"""
)

# The parent samples a.db while it has it open; a forked child opens b.db after the parent
# closed a.db. The child inherits the parent's tracer, its connection objects and its -shm
# descriptors, but a.db is not the child's to sample.
FORKED_CHILD = (
    """
import glob
import multiprocessing
import os
import sqlite3
import sys
import time
"""
    + WAIT_FOR_SAMPLES
    + """

def child(a_closed, b):
    a_closed.wait()
    conn = sqlite3.connect(b, isolation_level=None)
    conn.execute("INSERT INTO t (body) VALUES (randomblob(400))")
    wait_for_samples(2)
    conn.close()


if __name__ == "__main__":
    a, b = sys.argv[1], sys.argv[2]
    ctx = multiprocessing.get_context("fork")
    conn = sqlite3.connect(a, isolation_level=None)
    conn.execute("INSERT INTO t (body) VALUES (randomblob(400))")
    wait_for_samples(2)
    a_closed = ctx.Event()
    proc = ctx.Process(target=child, args=(a_closed, b), name="child")
    proc.start()
    conn.close()
    a_closed.set()
    proc.join()
    sys.exit(proc.exitcode)
"""
)


def make_db(path: Path, journal_mode: str = "wal") -> Path:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    conn.commit()
    conn.close()
    return path


def run_readers_and_writer(
    tmp_path: Path, mode: str, journal_mode: str = "wal", kind: str = "threads"
) -> Traced:
    make_db(tmp_path / "app.db", journal_mode)
    program = write_program(tmp_path, "relay.py", READERS_AND_WRITER)
    traced = lockprobe_trace(tmp_path, sys.executable, program.name, "app.db", mode, kind)
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert traced.proc.stdout.startswith("rows 6000\n")
    return traced


def wal_samples(traced: Traced) -> list[dict]:
    return [e for e in traced.events if e["k"] == "wal"]


# ------------------------------------------------------------------- trace, end to end


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_readers_that_always_overlap_starve_the_checkpoint_and_trace_finds_it(
    tmp_path, kind: str
) -> None:
    # With processes, each of the four samples app.db: one file's readings, merged by time.
    traced = run_readers_and_writer(tmp_path, "starved", kind=kind)
    assert len({e["pid"] for e in traced.events if e["k"] == "open"}) == (
        4 if kind == "processes" else 1
    )
    assert traced.patterns == ["checkpoint-starvation"]
    (finding,) = traced.report["findings"]
    facts = finding["evidence"]
    assert facts["wal_frames_peak"] > GROWTH_FACTOR * AUTOCHECKPOINT
    assert facts["frames_left"] > 0  # the readers kept the checkpoint from the end
    assert facts["reader_coverage"] >= 0.9 and finding["confidence"] == "high"
    snapshot = f"relay.py:{line_of(READERS_AND_WRITER, 'snapshot')} reader"
    assert any(snapshot in line for line in facts["lines"])
    samples = wal_samples(traced)
    assert {s["db"] for s in samples} == {str((tmp_path / "app.db").resolve())}
    # Sampled from inside the program: the WAL as it grew, not only at the end. A sample
    # taken while -shm was still shorter than its header has no frame count (None).
    frames = [s["mx_frame"] for s in samples if s["mx_frame"] is not None]
    assert frames and min(frames) < facts["wal_frames_peak"]


def test_readers_that_let_checkpoints_finish_keep_the_wal_small_and_healthy(tmp_path) -> None:
    traced = run_readers_and_writer(tmp_path, "healthy")
    assert traced.patterns == []
    samples = wal_samples(traced)
    assert len(samples) >= 4  # sampled, and the samples say it is fine
    frames = [s["mx_frame"] for s in samples if s["mx_frame"] is not None]
    assert frames and max(frames) < 2 * AUTOCHECKPOINT
    assert max(s["bytes"] for s in samples) > 0


def test_a_rollback_journal_program_records_no_wal_samples(tmp_path) -> None:
    traced = run_readers_and_writer(tmp_path, "healthy", journal_mode="delete")
    assert traced.patterns == []
    assert wal_samples(traced) == []
    assert {e["journal_mode"] for e in traced.events if e["k"] == "open"} == {"delete"}


def test_a_forked_child_samples_its_own_database_and_not_its_parents(tmp_path) -> None:
    a, b = make_db(tmp_path / "a.db"), make_db(tmp_path / "b.db")
    # A connection of this test process that has read keeps a.db's -wal and -shm in place
    # when the traced parent closes its own (SQLite deletes them at the last close only).
    keeper = sqlite3.connect(a)
    keeper.execute("SELECT count(*) FROM t").fetchone()
    try:
        program = write_program(tmp_path, "forks.py", FORKED_CHILD)
        traced = lockprobe_trace(tmp_path, sys.executable, program.name, a.name, b.name)
    finally:
        keeper.close()
    assert traced.proc.returncode == 0, traced.proc.stderr
    conns = {e["conn"]: e for e in traced.events if e["k"] == "open"}
    assert len(conns) == 2
    opened = {e["pid"]: e["t"] for e in conns.values()}
    closed = {conns[e["conn"]]["pid"]: e["t"] for e in traced.events if e["k"] == "close"}
    parent, child = sorted(opened, key=opened.__getitem__)
    a_samples = [s for s in wal_samples(traced) if s["db"] == str(a.resolve())]
    b_samples = [s for s in wal_samples(traced) if s["db"] == str(b.resolve())]
    # The parent sampled a.db while it had it open; nobody did after it closed it.
    assert a_samples and all(opened[parent] <= s["t"] <= closed[parent] for s in a_samples)
    # The child sampled its own database, while it had it open.
    assert b_samples
    assert all(opened[child] <= s["t"] <= closed[child] for s in b_samples)


# ------------------------------------------------- the sampler's descriptors, in this process

TRY_WRITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    conn.execute("BEGIN IMMEDIATE")
except sqlite3.OperationalError as exc:
    print("blocked:", exc)
else:
    print("got the write lock")
"""


def other_process_can_write(db: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", TRY_WRITE, str(db)],
        capture_output=True,
        text=True,
        timeout=SAFETY_TIMEOUT,
    ).stdout
    assert out.startswith(("blocked:", "got the write lock")), out
    return out.startswith("got")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def frames_in_wal_file(db: Path) -> int:
    """Frames in a -wal file that was never restarted: all of them are valid."""
    return (os.path.getsize(f"{db}-wal") - 32) // (PAGE_SIZE + 24)


def test_samples_only_wal_databases_while_the_process_has_them_open(tmp_path) -> None:
    wal_db, rollback_db = make_db(tmp_path / "wal.db"), make_db(tmp_path / "rb.db", "delete")
    events: list[tuple] = []
    sampler = TraceWal(events.append)
    conns = [sqlite3.connect(p, isolation_level=None) for p in (wal_db, rollback_db)]
    for conn, path in zip(conns, (wal_db, rollback_db), strict=True):
        conn.execute("INSERT INTO t (body) VALUES (randomblob(400))")
        sampler.opened(str(path))
    sampler.tick()
    assert [e[0] for e in events] == ["wal"]
    kind, t, wal_bytes, mx_frame, backfilled, db = events[0]
    assert db == str(wal_db) and mx_frame == frames_in_wal_file(wal_db) > 0
    assert wal_bytes == os.path.getsize(f"{wal_db}-wal") and backfilled == 0
    sampler.closed(str(wal_db))
    events.clear()
    sampler.tick()
    assert events == []  # the process no longer has it open (its -wal is still there)
    for conn in conns:
        conn.close()


def test_a_shm_descriptor_still_in_use_is_never_closed(tmp_path) -> None:
    db = make_db(tmp_path / "app.db")
    # A connection the sampler does not count (as the program's untraced ones) holds the WAL
    # write lock: a byte lock on -shm, held by this process.
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("INSERT INTO t (body) VALUES (randomblob(400))")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t (body) VALUES (randomblob(400))")
    assert not other_process_can_write(db)
    sampler = TraceWal(lambda event: None)
    sampler.opened(str(db))
    sampler.tick()  # opens -shm
    sampler.closed(str(db))
    sampler.tick()  # no connection counted: the descriptor must stay all the same
    sampler.tick()
    assert not other_process_can_write(db), "the sampler released this process's WAL lock"
    holder.execute("COMMIT")
    holder.close()


def test_the_descriptor_of_a_deleted_shm_is_let_go_and_a_new_one_is_read(tmp_path) -> None:
    events: list[tuple] = []
    sampler = TraceWal(events.append)
    before = open_descriptors()
    for i in range(20):  # a test suite's temporary databases, one after the other
        db = make_db(tmp_path / f"test{i}.db")
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("INSERT INTO t (body) VALUES (randomblob(400))")
        sampler.opened(str(db))
        sampler.tick()
        conn.close()  # the last connection: SQLite deletes -wal and -shm
        sampler.closed(str(db))
    sampler.tick()
    assert open_descriptors() == before
    # The same database opened again gets a new -shm: read that one, not the deleted one.
    db = tmp_path / "test0.db"
    conn = sqlite3.connect(db, isolation_level=None)
    sampler.opened(str(db))
    conn.executemany("INSERT INTO t (body) VALUES (randomblob(400))", [()] * 30)
    events.clear()
    sampler.tick()
    ((*_, mx_frame, _, sampled),) = events
    assert sampled == str(db) and mx_frame == frames_in_wal_file(db) > 20
    conn.close()
    sampler.closed(str(db))


def test_the_flusher_samples_before_each_write_and_once_more_when_it_stops(tmp_path) -> None:
    recording = EventFile(tmp_path / "events.lpk")
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(time.monotonic_ns())
        recording.append(("wal", ticks[-1], len(ticks), None, None, "x.db"))

    recording.tick = tick
    recording.start_flusher()
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while recording.written < 2:
        assert time.monotonic() < deadline, "the flusher never ticked"
        time.sleep(0.01)
    recording.stop_flusher()
    assert len(recording.pending) == 1  # the tick when it stopped, for the caller to write
    recording.close()
    written = [e["bytes"] for e in read_event_file(recording.path)]
    assert written == list(range(1, len(ticks) + 1))
