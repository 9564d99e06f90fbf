"""A process that takes one SQLite lock on a database and keeps it until told to stop.

Run as `python holder.py DB MODE`. It prints "ready" once the lock is held and then waits for a
line on stdin before it ends (releasing the lock), so tests synchronise on its output, not on time.
Modes: shared, reserved, pending, exclusive (rollback journal); wal-writer, wal-reader, wal-idle
(WAL); crash (dies with a hot journal); writer-loop (commits until told to stop, busy_timeout 0).
"""

import os
import sqlite3
import sys
import threading


def wait_for_stop() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def main(db: str, mode: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    if mode == "shared":
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchall()
    elif mode == "reserved":
        conn.execute("BEGIN IMMEDIATE")
    elif mode == "pending":
        # Needs another process holding SHARED: COMMIT then fails with SQLITE_BUSY and the
        # connection is left holding PENDING (os_unix.c unixLock keeps it on failure).
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(x) VALUES ('pending')")
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            print(f"commit failed: {exc}", file=sys.stderr)
        else:
            print("committed: no reader held SHARED", flush=True)
            return
    elif mode == "exclusive":
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("INSERT INTO t(x) VALUES ('exclusive')")
    elif mode == "wal-writer":
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t(x) VALUES ('wal-writer')")
    elif mode == "wal-reader":
        conn.execute("INSERT INTO t(x) VALUES ('frame for the read mark')")
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchall()
    elif mode == "wal-idle":
        conn.execute("SELECT count(*) FROM t").fetchall()
    elif mode == "crash":
        # A tiny page cache makes the UPDATE spill pages into the database file mid-transaction;
        # before that SQLite syncs the journal and writes its magic, making it hot on a crash.
        conn.execute("PRAGMA cache_size = 2")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE t SET x = 'changed, never committed'")
        print("ready", flush=True)
        sys.stdin.readline()
        os._exit(1)  # dies mid-transaction, like kill -9: the journal stays behind
    elif mode == "writer-loop":
        writer_loop(conn)
        return
    else:
        raise SystemExit(f"unknown mode {mode}")
    wait_for_stop()


def writer_loop(conn: sqlite3.Connection) -> None:
    """Commit as fast as possible; count SQLITE_BUSY (busy_timeout is 0, so any lock another
    process takes makes a commit fail at once). Prints "commits=N busy=M" when stopped."""
    stop = threading.Event()
    commits = busy = 0

    def watch_stdin() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.is_set():
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(x) VALUES (randomblob(100))")
            conn.execute("COMMIT")
            commits += 1
        except sqlite3.OperationalError:
            busy += 1
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if commits == 1 and busy == 0:
            print("ready", flush=True)
    print(f"commits={commits} busy={busy}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
