"""The probe's lock-table reading (locktable.sample_holders): real locks held by real
processes, read from /proc/locks and, where that is missing, with F_GETLK on a descriptor
SQLite already has open, without disturbing this process's own locks."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlite_lockprobe.probe import locktable


def own_lock_lines(db: Path) -> list[str]:
    """This process's locks on db, without /proc/locks' ordinal (it shifts as other locks come
    and go on the machine)."""
    inode = os.stat(db).st_ino
    with open("/proc/locks") as table:
        return [
            line.split(":", 1)[1].strip()
            for line in table
            if f":{inode} " in line and f" {os.getpid()} " in line
        ]


def test_proc_locks_names_an_outside_reserved_holder(rollback_db, holder) -> None:
    writer = holder(rollback_db, "reserved")
    sample = locktable.sample_holders(str(rollback_db))
    assert sample.source == "/proc/locks"
    assert locktable.HeldLock(writer.pid, "db", "RESERVED", "write") in sample.locks


def test_wal_write_lock_is_read_from_the_shm(wal_db, holder) -> None:
    writer = holder(wal_db, "wal-writer")
    held = {(lock.pid, lock.name) for lock in locktable.sample_holders(str(wal_db)).locks}
    assert (writer.pid, "WAL_WRITE_LOCK") in held
    assert not any(name == "DMS" for _, name in held)  # every connection's read lock: noise


def test_only_lines_about_the_database_are_parsed(rollback_db, tmp_path) -> None:
    st = os.stat(rollback_db)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    table = tmp_path / "locks"
    table.write_text(
        f"1: POSIX  ADVISORY  READ  4242 {dev}:{st.st_ino} 1073741826 1073742335\n"
        f"2: POSIX  ADVISORY  WRITE 4242 {dev}:{st.st_ino} 1073741825 1073741825\n"
        f"3: POSIX  ADVISORY  WRITE 5151 {dev}:{st.st_ino}9 1073741825 1073741825\n"
        f"3: -> POSIX  ADVISORY  WRITE 6161 {dev}:{st.st_ino} 1073741825 1073741825\n"
        f"4: POSIX  ADVISORY  WRITE 7171 {dev}:1{st.st_ino} 0 EOF\n"
    )
    sample = locktable.sample_holders(str(rollback_db), str(table))
    assert sample.locks == (locktable.HeldLock(4242, "db", "RESERVED", "write"),)


def test_without_proc_locks_f_getlk_borrows_sqlites_descriptor(rollback_db, holder) -> None:
    """F_GETLK never names this process, and borrowing SQLite's descriptor (never opening and
    closing our own) leaves this process's SHARED lock in place."""
    writer = holder(rollback_db, "reserved")
    conn = sqlite3.connect(rollback_db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchall()  # this process now holds SHARED
        before = own_lock_lines(rollback_db)
        assert before
        sample = locktable.sample_holders(str(rollback_db), "/nonexistent/proc/locks")
        assert sample.source == "F_GETLK"
        assert {(lock.pid, lock.name) for lock in sample.locks} == {(writer.pid, "RESERVED")}
        assert own_lock_lines(rollback_db) == before
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_without_proc_locks_or_an_open_descriptor_it_says_so(rollback_db) -> None:
    sample = locktable.sample_holders(str(rollback_db), "/nonexistent/proc/locks")
    assert sample.source == "unavailable" and sample.locks == ()
    assert "no open descriptor" in (sample.note or "")


def test_a_missing_database_file_is_unavailable(tmp_path) -> None:
    sample = locktable.sample_holders(str(tmp_path / "gone.db"))
    assert sample.source == "unavailable"
