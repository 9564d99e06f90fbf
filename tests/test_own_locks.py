"""lockprobe must never release the locks of the process it runs in. POSIX locks belong to
the process, and closing any descriptor of a file drops all of them: reading a header or the
WAL index with open()/close() while this process's SQLite connections hold locks would break
them silently (another process could then write, or SQLite would truncate a mapped -shm)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sqlite_lockprobe.probe.tracer import read_header
from sqlite_lockprobe.sources.run.walsampler import WalSampler

pytestmark = pytest.mark.probe

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


def _other_process_can_write(db: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", TRY_WRITE, str(db)], capture_output=True, text=True, timeout=60
    ).stdout
    assert out.startswith(("blocked:", "got the write lock")), out
    return out.startswith("got")


def test_reading_the_header_keeps_this_process_s_write_lock(db: Path) -> None:
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # RESERVED, held by this process
    assert not _other_process_can_write(db)
    assert read_header(str(db)) == ("delete", 4096)
    assert read_header(str(db)) == ("delete", 4096)
    assert not _other_process_can_write(db), "reading the header released our lock"
    holder.execute("ROLLBACK")
    holder.close()
    assert _other_process_can_write(db)


def test_sampling_the_wal_index_keeps_this_process_s_locks(db: Path) -> None:
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.close()
    reader = sqlite3.connect(db, isolation_level=None)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("INSERT INTO t (v) VALUES (1)")  # committed: the WAL has frames
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t (v) VALUES (1)")  # the WAL write lock, held by this process
    sampler = WalSampler(db, lambda event: None)
    for _ in range(3):
        wal_bytes, mx_frame, _ = sampler.sample()
        assert wal_bytes > 0 and mx_frame is not None
    assert not _other_process_can_write(db), "sampling -shm released our WAL locks"
    # A new connection in this process still sees the others (the DMS lock is held), so it
    # does not reset -shm under their feet; reading through it works.
    late = sqlite3.connect(db)
    assert late.execute("SELECT count(*) FROM t").fetchone() == (2,)
    holder.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (3,)
    for conn in (late, reader, holder):
        conn.close()
    sampler.stop()
