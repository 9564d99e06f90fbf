"""One connection as a worker uses it: open, instrument, run calls, record each call."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_lockprobe.probe import ConnectionProbe, Emit, error_codes

_ISOLATION = {"deferred": "DEFERRED", "immediate": "IMMEDIATE", "exclusive": "EXCLUSIVE"}
_conn_numbers = itertools.count(1)
SQLITE_BUSY = 5
_OPEN_TIMEOUT_MS = 5000
# Each thread's OS id, asked of the OS once per thread: gettid() is a system call, and asking
# on every call cost a sixth of the engine's own time per call.
_this_thread = threading.local()
# The operations that run their SQL with execute() and finish it.
_STATEMENTS = frozenset({"begin", "write", "read"})


def _thread_id() -> int:
    try:
        return _this_thread.native_id  # type: ignore[no-any-return]
    except AttributeError:
        _this_thread.native_id = threading.get_native_id()
        return _this_thread.native_id  # type: ignore[no-any-return]


def isolation_level(transaction_mode: str) -> str | None:
    """Python's isolation_level for a transaction mode (autocommit = None: no implicit BEGIN)."""
    return _ISOLATION.get(transaction_mode)


@dataclass(frozen=True)
class ConnectionSpec:
    """How to open a connection: everything a worker process needs, picklable."""

    db_path: str
    group: str
    timeout_ms: int
    transaction_mode: str
    journal_mode: str
    synchronous: str | None = None
    wal_autocheckpoint: int | None = None
    instrument: bool = True
    shared_cache: bool = False

    def connect_target(self) -> tuple[str, bool]:
        """What to pass to sqlite3.connect, and whether it is a URI: with shared_cache, every
        connection of a process opens the file through one shared cache (`cache=shared`)."""
        if not self.shared_cache:
            return self.db_path, False
        return f"{Path(self.db_path).resolve().as_uri()}?cache=shared", True

    def connection_pragmas(self) -> list[str]:
        """Per-connection settings (synchronous and wal_autocheckpoint are not persistent)."""
        pragmas = []
        if self.synchronous:
            pragmas.append(f"PRAGMA synchronous = {self.synchronous.upper()}")
        if self.wal_autocheckpoint is not None:
            pragmas.append(f"PRAGMA wal_autocheckpoint = {int(self.wal_autocheckpoint)}")
        return pragmas


class Session:
    """An open connection, its probe, and the recording of every call made through it.

    A `shared` session is used by several workers: calls are serialised by a lock so the
    statements and busy-handler calls of each call are attributed to the right worker."""

    def __init__(self, spec: ConnectionSpec, emit: Emit, worker: str, shared: bool = False) -> None:
        self.spec = spec
        self.emit = emit
        self.conn_id = f"c{os.getpid()}.{next(_conn_numbers)}"
        self._lock = threading.RLock() if shared else None
        # Per SQL text: (its statement tuple, whether it sets the busy timeout).
        self._own_statement: dict[str, tuple[tuple[str], bool]] = {}
        # Cursors of open_read steps, kept unfinished until close_reads: (cursor, sql).
        self.open_reads: list[tuple[sqlite3.Cursor, str]] = []
        # Opening is set-up, not the workload: settle it under a generous timeout. With WAL,
        # the first reader after the last connection closed runs recovery of the wal-index,
        # and connections opened meanwhile get SQLITE_BUSY_RECOVERY at once with timeout 0
        # (https://sqlite.org/wal.html#recovery): a scenario's worker must not die of that.
        # Some pragmas read the schema too. The scenario's own timeout is applied after.
        target, uri = spec.connect_target()
        self.conn = sqlite3.connect(
            target,
            uri=uri,
            timeout=max(spec.timeout_ms, _OPEN_TIMEOUT_MS) / 1000,
            isolation_level=isolation_level(spec.transaction_mode),
            check_same_thread=False,
        )
        for pragma in spec.connection_pragmas():
            self.conn.execute(pragma)
        self.conn.execute("PRAGMA schema_version").fetchall()  # reads the schema and wal-index
        self.conn.execute(f"PRAGMA busy_timeout = {int(spec.timeout_ms)}").fetchall()
        self._cursor = self.conn.cursor()
        self.probe: ConnectionProbe | None = None
        reduced_reason = None
        if spec.instrument:
            self.probe = ConnectionProbe(self.conn, self.conn_id, emit, timeout_ms=spec.timeout_ms)
            reduced_reason = self.probe.reduced_reason if not self.probe.instrumented else None
        emit(
            (
                "open",
                time.monotonic_ns(),
                self.conn_id,
                worker,
                spec.group,
                os.getpid(),
                spec.timeout_ms,
                isolation_level(spec.transaction_mode),
                spec.journal_mode,
                bool(self.probe and self.probe.instrumented),
                reduced_reason,
            )
        )

    def call(self, worker: str, task: str | None, op: str, sql: str, params: Any = ()) -> bool:
        """Run one call (execute/commit/rollback) and record it. Returns False when SQLite
        refused it; any other exception is a bug in the scenario or here, and propagates."""
        return self.run_calls(worker, task, ((op, sql, True),), params, True)[1]

    def run_calls(
        self,
        worker: str,
        task: str | None,
        calls: Iterable[tuple[str, str, bool]],
        params: Any,
        stop_on_error: bool,
    ) -> tuple[int, bool]:
        """Make calls (op, SQL, whether it binds `params`) in order; with `stop_on_error`
        the first refused one ends the run. Returns (calls made, whether the run went
        through). A shared session takes its lock for each call, so the statements and
        busy-handler calls of each call are attributed to the right worker."""
        record, lock, thread = self._record, self._lock, _thread_id()
        made = 0
        for op, sql, with_params in calls:
            made += 1
            if lock is None:
                ok = record(worker, thread, task, op, sql, params if with_params else ())
            else:
                with lock:
                    ok = record(worker, thread, task, op, sql, params if with_params else ())
            if not ok and stop_on_error:
                return made, False
        return made, True

    def _close_reads(self, worker: str, thread: int, task: str | None) -> bool:
        ok = True
        while self.open_reads:
            cursor, read_sql = self.open_reads.pop(0)
            ok = self._record(worker, thread, task, "close_read", read_sql, (), cursor) and ok
        return ok

    def _record(
        self,
        worker: str,
        thread: int,
        task: str | None,
        op: str,
        sql: str,
        params: Any,
        cursor: sqlite3.Cursor | None = None,
    ) -> bool:
        if op == "close_reads":
            return self._close_reads(worker, thread, task)
        probe = self.probe
        busy_before = probe.busy_calls if probe else 0
        err = ext = msg = None
        conn = self.conn
        t0 = time.monotonic_ns()
        try:
            if op in _STATEMENTS:  # the common case first: one compare, not four
                cursor = self._cursor
                cursor.execute(sql, params)
                if cursor.description is not None:
                    cursor.fetchall()
            elif op == "commit":
                conn.commit()
            elif op == "rollback":
                conn.rollback()
            elif op == "close_read":
                assert cursor is not None
                cursor.close()
            elif op == "open_read":
                # One step of the query: the statement stays unfinished, holding its read
                # (a SHARED lock or WAL snapshot; in a shared cache, a read lock on the table).
                opened = conn.execute(sql, params)
                opened.fetchone()
                self.open_reads.append((opened, sql))
            else:
                raise ValueError(f"unknown call {op!r}")
        except sqlite3.Error as exc:
            t1 = time.monotonic_ns()
            msg = str(exc)
            err, ext = probe.error_codes(exc) if probe is not None else error_codes(exc)
            if err == SQLITE_BUSY and probe is not None and probe.last_sample_ns < t0:
                probe.sample_after_failure()  # refused without a wait: who holds it now?
        else:
            t1 = time.monotonic_ns()
        if probe is not None:
            # The statements SQLite ran (drained inline: this is the hot path). One statement
            # is the call's own: execute() runs one (an implicit BEGIN or a trigger makes more)
            # and commit() and rollback() run theirs. It is recorded as one tuple shared by
            # every call with this SQL, not as the trace's fresh text with the parameters
            # expanded: cheaper to keep, write and read back, and no application data in the
            # log. Whether the SQL sets the busy timeout is worked out once per text too.
            own = self._own_statement.get(sql)
            if own is None:
                own = self._own_statement[sql] = ((sql,), "busy_timeout" in sql.lower())
            traced = probe.statements
            stmts = own[0] if len(traced) == 1 else tuple(traced)
            traced.clear()
            if own[1]:
                probe.follow_sql(sql)
        else:
            stmts = ()
        self.emit(
            (
                "call",
                t0,
                t1,
                self.conn_id,
                worker,
                thread,
                task,
                op,
                sql,
                stmts,
                (probe.busy_calls - busy_before) if probe else None,
                err,
                ext,
                msg,
                conn.in_transaction,
                None,
            )
        )
        return msg is None

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.emit(("close", time.monotonic_ns(), self.conn_id))
