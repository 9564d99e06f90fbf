"""One connection as a worker uses it: open, instrument, run calls, record each call."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from threading import get_ident
from typing import Any, Literal

from sqlite_lockprobe.events.eventfile import CALL_KEY
from sqlite_lockprobe.events.resultcodes import SQLITE_BUSY
from sqlite_lockprobe.events.schema import run_call_event
from sqlite_lockprobe.probe.capi import ConnectionProbe, Emit, error_codes

IsolationLevel = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]
_ISOLATION: dict[str, IsolationLevel] = {
    "deferred": "DEFERRED",
    "immediate": "IMMEDIATE",
    "exclusive": "EXCLUSIVE",
}
_conn_numbers = itertools.count(1)
# Call numbers are unique in a process: its sessions share one event file.
_call_keys = itertools.count(1)
_OPEN_TIMEOUT_MS = 5000
# The operations that run their SQL with execute() and finish it.
_STATEMENTS = frozenset({"begin", "write", "read"})


def isolation_level(transaction_mode: str) -> IsolationLevel | None:
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


# One call, prepared: (key, the function that makes it, its arguments, whether to fetch, its
# place: how many calls of its run are made once it is, itself included). With the probe, the
# place is also what the trace list holds after the call when it ran one statement and never
# waited (see Session._make_probed).
_Step = tuple[int, Callable[..., Any], tuple[Any, ...], bool, int]
# In a probed run's trace list, a call already claimed: the run's next calls keep their places.
_CLAIMED = ""


def _close_reads_step() -> None:
    """Stands for close_reads in a prepared run: CallRun makes one call per open read."""
    raise AssertionError("close_reads is made by CallRun, not as one call")


class Session:
    """An open connection, its probe, and the recording of every call made through it.

    A `shared` session is used by several workers: calls are serialised by a lock so the
    statements and busy-handler calls of each call are attributed to the right worker."""

    def __init__(self, spec: ConnectionSpec, emit: Emit, worker: str, shared: bool = False) -> None:
        self.spec = spec
        self.emit = emit
        self.conn_id = f"c{os.getpid()}.{next(_conn_numbers)}"
        self._lock = threading.RLock() if shared else None
        # The numbers of the calls made through this connection (see _key), both ways.
        self._key_numbers: dict[tuple[str, int, str | None, str, str], int] = {}
        self._called_as: dict[int, tuple[str, int, str | None, str, str]] = {}
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
            self.probe = ConnectionProbe(
                self.conn, self.conn_id, emit, timeout_ms=spec.timeout_ms, mark_busy=True
            )
            reduced_reason = self.probe.reduced_reason if not self.probe.instrumented else None
        # What the probe's trace hook appends to (see _make_probed).
        self._traced: list[str] = self.probe.statements if self.probe is not None else []
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

    def prepare(
        self,
        worker: str,
        task: str | None,
        calls: tuple[tuple[str, str, bool], ...],
        params: Any,
        stop_on_error: bool,
    ) -> CallRun:
        """A run of calls (op, SQL, whether it binds `params`) to make through this
        connection, again on every pass of a worker's steps."""
        return CallRun(self, worker, task, calls, params, stop_on_error)

    def _step(
        self, key: int, op: str, sql: str, with_params: bool, params: Any, place: int
    ) -> _Step:
        """How to make one call: (key, the function, its arguments, whether to fetch what
        the statement returns, its place in its run)."""
        args = (sql, params if with_params else ())
        if op == "close_reads":
            return (key, _close_reads_step, (), False, place)
        if "busy_timeout" in sql.lower():
            return (key, self._execute_following, args, False, place)
        if op in _STATEMENTS:  # a BEGIN returns no rows: no need to look for any
            return (key, self._cursor.execute, args, op != "begin", place)
        if op == "commit":
            return (key, self.conn.commit, (), False, place)
        if op == "rollback":
            return (key, self.conn.rollback, (), False, place)
        if op == "open_read":
            return (key, self._open_read, args, False, place)
        raise ValueError(f"unknown call {op!r}")

    def _make(self, steps: tuple[_Step, ...], stop_on_error: bool) -> tuple[int, bool]:
        """Make and record calls: the hot path of every run. A call that went through is one
        short record (see eventfile.CALL_KEY); a refused one is a full `call` event. Returns
        (calls made, whether the run went through)."""
        emit, clock, conn, cursor = self.emit, time.monotonic_ns, self.conn, self._cursor
        for key, function, args, fetch, place in steps:
            t0 = clock()
            try:
                function(*args)
                if fetch and cursor.description is not None:
                    cursor.fetchall()  # a read, or a write with RETURNING: run it to its end
            except sqlite3.Error as exc:
                self._record_refusal(key, t0, clock(), exc, place - 1)
                if stop_on_error:  # calls made: up to this one
                    return place, False
                continue
            t1 = clock()
            emit((t0, t1 - t0, key, conn.in_transaction))
        return len(steps), True

    def _make_probed(self, steps: tuple[_Step, ...], stop_on_error: bool) -> tuple[int, bool]:
        """_make with the probe: what each call ran and waited for is in the trace list
        (statements, and the busy handler's BUSY_MARKs), kept for the whole run. Most often
        a call ran one statement, its own (execute() runs one; an implicit BEGIN or a trigger
        makes more; commit() and rollback() run theirs), and never waited: then the list
        holds one entry per call so far, as many as the call's place, and the call is
        recorded as shortly as without the probe, read back with its own SQL as its
        statement (not the trace's copy with the parameter values expanded: no application
        data in the log). One length per call is all the checking it costs; a call that
        differs claims its part of the list."""
        emit, clock, conn, cursor, traced = (
            self.emit,
            time.monotonic_ns,
            self.conn,
            self._cursor,
            self._traced,
        )
        try:
            for key, function, args, fetch, place in steps:
                t0 = clock()
                try:
                    function(*args)
                    if fetch and cursor.description is not None:
                        cursor.fetchall()
                except sqlite3.Error as exc:
                    self._record_refusal(key, t0, clock(), exc, place - 1)
                    if stop_on_error:
                        return place, False
                    continue
                t1 = clock()
                if len(traced) != place:
                    self._record_long(key, t0, t1, place - 1)
                    continue
                emit((t0, t1 - t0, key, conn.in_transaction))
            return len(steps), True
        finally:
            traced.clear()

    def _claim(self, start: int) -> tuple[tuple[str, ...], int]:
        """What the call at `start` in its run ran and waited for (see _make_probed)."""
        assert self.probe is not None
        claimed = self.probe.claim(start)
        self._traced.append(_CLAIMED)
        return claimed

    def _record_long(self, key: int, t0: int, t1: int, start: int) -> None:
        """A call with busy waits, or other statements than its own."""
        stmts, busy = self._claim(start)
        own = None if len(stmts) == 1 else stmts  # its own SQL alone: not written again
        self.emit((t0, t1 - t0, key, self.conn.in_transaction, busy, own))

    def _execute_following(self, sql: str, params: Any) -> None:
        """A statement that sets the busy timeout: the probe's busy handler follows it."""
        self._cursor.execute(sql, params)
        self._cursor.fetchall()
        if self.probe is not None:
            self.probe.follow_sql(sql)

    def _open_read(self, sql: str, params: Any) -> None:
        """One step of the query: the statement stays unfinished, holding its read (a SHARED
        lock or WAL snapshot; in a shared cache, a read lock on the table) until close_reads."""
        opened = self.conn.execute(sql, params)
        opened.fetchone()
        self.open_reads.append((opened, sql))

    def _close_reads(self, worker: str, thread: int, task: str | None) -> tuple[int, bool]:
        made, ok = 0, True
        make = self._make if self.probe is None else self._make_probed
        while self.open_reads:
            cursor, read_sql = self.open_reads.pop(0)
            key = self._key(worker, thread, task, "close_read", read_sql)
            n, closed = make(((key, cursor.close, (), False, 1),), False)
            made, ok = made + n, ok and closed
        return made, ok

    def _key(self, worker: str, thread: int, task: str | None, op: str, sql: str) -> int:
        """The number short call records give this (worker, thread, task, op, SQL) on this
        connection: defined once in the event file by a CALL_KEY record (eventfile.py)."""
        who = (worker, thread, task, op, sql)
        key = self._key_numbers.get(who)
        if key is None:
            key = self._key_numbers[who] = next(_call_keys)
            self._called_as[key] = who
            probed = self.probe is not None
            self.emit((CALL_KEY, key, self.conn_id, worker, thread, task, op, sql, probed))
        return key

    def _record_refusal(self, key: int, t0: int, t1: int, exc: sqlite3.Error, start: int) -> None:
        """A call SQLite refused, as a full `call` event with its error codes; `start`: its
        place in its run's trace list."""
        worker, thread, task, op, sql = self._called_as[key]
        probe = self.probe
        msg = str(exc)
        if probe is None:
            stmts: tuple[str, ...] = ()
            err, ext = error_codes(exc)
            busy = None
        else:
            stmts, busy = self._claim(start)
            if len(stmts) == 1:
                stmts = (sql,)  # its own SQL, as a call that went through records it
            err, ext = probe.error_codes(exc)
            if err == SQLITE_BUSY and probe.last_sample_ns < t0:
                probe.sample_after_failure()  # refused without a wait: who holds it now?
        self.emit(
            run_call_event(
                t0=t0,
                t1=t1,
                conn=self.conn_id,
                worker=worker,
                thread=thread,
                task=task,
                op=op,
                sql=sql,
                stmts=stmts,
                busy=busy,
                err=err,
                ext=ext,
                msg=msg,
                in_txn=self.conn.in_transaction,
            )
        )

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.emit(("close", time.monotonic_ns(), self.conn_id))


class CallRun:
    """Consecutive calls a worker makes through one session on every pass of its steps. How
    to make each (the function, its arguments, its key in the event file) is worked out on
    the first run, on the thread that makes the calls: the recorded thread is part of the
    key, and an aiosqlite-style connection runs its calls on a thread of its own."""

    __slots__ = (
        "session",
        "worker",
        "task",
        "calls",
        "params",
        "stop_on_error",
        "_ident",
        "_thread",
        "_steps",
        "_singles",
        "_one_by_one",
        "_make_calls",
    )

    def __init__(
        self,
        session: Session,
        worker: str,
        task: str | None,
        calls: tuple[tuple[str, str, bool], ...],
        params: Any,
        stop_on_error: bool,
    ) -> None:
        self.session = session
        self.worker = worker
        self.task = task
        self.calls = calls
        self.params = params
        self.stop_on_error = stop_on_error
        self._ident: int | None = None  # threading.get_ident() of the thread prepared for
        self._thread = 0
        self._steps: tuple[_Step, ...] = ()  # in their places in the run
        self._singles: tuple[_Step, ...] = ()  # each made alone: all in place 1
        # A shared session takes its lock for each call (so each call's statements and busy
        # waits are its own worker's); close_reads makes one call per open read.
        self._one_by_one = session._lock is not None or any(c[0] == "close_reads" for c in calls)
        # How the session makes calls, chosen once rather than on every run.
        self._make_calls = session._make if session.probe is None else session._make_probed

    def make(self, only: int | None = None) -> tuple[int, bool]:
        """Make the calls in order, or just calls[only]; with stop_on_error the first refused
        one ends the run. Returns (calls made, whether the run went through)."""
        if self._ident != get_ident():
            self._prepare()
        if only is None and not self._one_by_one:
            return self._make_calls(self._steps, self.stop_on_error)
        session = self.session
        made = 0
        lock = session._lock or nullcontext()
        for step in self._singles if only is None else self._singles[only : only + 1]:
            with lock:
                if step[1] is _close_reads_step:
                    n, ok = session._close_reads(self.worker, self._thread, self.task)
                else:
                    n, ok = self._make_calls((step,), self.stop_on_error)
            made += n
            if not ok and self.stop_on_error:
                return made, False
        return made, True

    def _prepare(self) -> None:
        session, worker, task = self.session, self.worker, self.task
        self._thread = thread = threading.get_native_id()  # a system call: once per thread
        self._singles = singles = tuple(
            session._step(
                session._key(worker, thread, task, op, sql), op, sql, flag, self.params, 1
            )
            for op, sql, flag in self.calls
        )
        self._steps = tuple((s[0], s[1], s[2], s[3], place) for place, s in enumerate(singles, 1))
        self._ident = get_ident()
