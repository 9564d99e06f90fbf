"""Instrument one stdlib sqlite3 connection with SQLite's own hooks.

- the busy handler (sqlite3_busy_handler, reached through ctypes on the libsqlite3 that
  `_sqlite3` loaded) records every retry while a lock is busy, and keeps the connection's
  busy_timeout semantics by sleeping on SQLite's own schedule (main.c,
  sqliteDefaultBusyCallback);
- the trace hook records the statements SQLite ran, Python's implicit BEGIN included: where
  the compiled fast path is built, its `StatementList`, registered with sqlite3_trace_v2,
  which copies each statement's text without taking the GIL (_speedups.c); else
  Connection.set_trace_callback given a C-level `list.append`.

Standard library only: `lockprobe trace` injects this module into users' interpreters.
Where ctypes cannot reach the handle (a statically linked build, an unknown object layout),
the probe still traces statements and says its wait detail is reduced.
"""

from __future__ import annotations

import _sqlite3  # sqlite3's C module: importing it runs no hook (see SqliteCApi.self_test)
import contextlib
import ctypes
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

try:  # standard library only, but fcntl exists on Unix alone
    from sqlite_lockprobe.probe import locktable
except ImportError:  # pragma: no cover - not on Linux
    locktable = None  # type: ignore[assignment]

Emit = Callable[[tuple[Any, ...]], None]

# SQLite's default busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms
# per retry, and gives up when the next sleep would pass busy_timeout (main.c,
# sqliteDefaultBusyCallback, the usleep/nanosleep branch used on Linux and macOS).
_DELAYS_MS = (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100)
_TOTALS_MS = (0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228)


def busy_delay_ms(count: int, timeout_ms: int) -> int:
    """How long SQLite's default busy handler sleeps before retry number `count` (0-based),
    or 0 when it would give up and return SQLITE_BUSY instead."""
    if count < len(_DELAYS_MS):
        delay, prior = _DELAYS_MS[count], _TOTALS_MS[count]
    else:
        delay = _DELAYS_MS[-1]
        prior = _TOTALS_MS[-1] + delay * (count - (len(_DELAYS_MS) - 1))
    if prior + delay > timeout_ms:
        delay = timeout_ms - prior
        if delay <= 0:
            return 0
    return delay


_BusyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)

# A busy-handler call, in the statement list of a probe that marks them (the run engine's):
# then one look at the list's length after a call tells whether it ran one statement and
# never waited. Two marks per call, so a call that waited never leaves exactly one entry,
# even one that ran no statement.
BUSY_MARK = "<busy>"
_BUSY_MARKS = (BUSY_MARK, BUSY_MARK)


PURE_PYTHON_ENV = "LOCKPROBE_PURE_PYTHON"


_NOT_LOOKED_UP: Any = object()
_speedups_found: Any = _NOT_LOOKED_UP


def compiled_speedups() -> Any:
    """`sqlite_lockprobe.probe._speedups`, the probe's compiled fast path, or None: not built
    for this interpreter (a wheel carries the extension for one Python; a traced program may run
    another), or not wanted (LOCKPROBE_PURE_PYTHON=1: the pure-Python twin records the same).
    Looked up once per process: every new connection asks (the environment lookup and the
    import statement cost a connection about 4 us)."""
    global _speedups_found
    if _speedups_found is _NOT_LOOKED_UP:
        _speedups_found = _find_speedups()
    return _speedups_found


def _find_speedups() -> Any:
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        return None
    try:
        import sqlite_lockprobe.probe._speedups as _speedups
    except Exception:  # ImportError, or a broken build: the Python path works the same
        return None
    return _speedups


class SqliteCApi:
    """The few C functions the probe needs, from the libsqlite3 that `_sqlite3` loaded.

    dlsym on the extension module's handle also searches the libraries it links, so a
    dynamically linked libsqlite3 is found without guessing its path."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(_sqlite3.__file__)
        vp, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        self.busy_handler = lib.sqlite3_busy_handler
        self.busy_handler.argtypes = [vp, _BusyCallback, vp]
        self.busy_handler.restype = c_int
        self.busy_timeout = lib.sqlite3_busy_timeout
        self.busy_timeout.argtypes = [vp, c_int]
        self.busy_timeout.restype = c_int
        self.txn_state = lib.sqlite3_txn_state
        self.txn_state.argtypes = [vp, c_char_p]
        self.txn_state.restype = c_int
        self.extended_errcode = lib.sqlite3_extended_errcode
        self.extended_errcode.argtypes = [vp]
        self.extended_errcode.restype = c_int
        self.get_autocommit = lib.sqlite3_get_autocommit
        self.get_autocommit.argtypes = [vp]
        self.get_autocommit.restype = c_int
        self.total_changes = lib.sqlite3_total_changes
        self.total_changes.argtypes = [vp]
        self.total_changes.restype = c_int
        self.libversion_number = lib.sqlite3_libversion_number
        self.libversion_number.restype = c_int
        self.db_filename = lib.sqlite3_db_filename
        self.db_filename.argtypes = [vp, c_char_p]
        self.db_filename.restype = c_char_p
        # For `unfinished_statements`: another thread's connection, read under its own mutex.
        self.db_mutex = lib.sqlite3_db_mutex
        self.db_mutex.argtypes = [vp]
        self.db_mutex.restype = vp
        self.mutex_try = lib.sqlite3_mutex_try
        self.mutex_try.argtypes = [vp]
        self.mutex_try.restype = c_int
        self.mutex_leave = lib.sqlite3_mutex_leave
        self.mutex_leave.argtypes = [vp]
        self.mutex_leave.restype = None
        self.next_stmt = lib.sqlite3_next_stmt
        self.next_stmt.argtypes = [vp, vp]
        self.next_stmt.restype = vp
        self.stmt_busy = lib.sqlite3_stmt_busy
        self.stmt_busy.argtypes = [vp]
        self.stmt_busy.restype = c_int
        self.stmt_readonly = lib.sqlite3_stmt_readonly
        self.stmt_readonly.argtypes = [vp]
        self.stmt_readonly.restype = c_int
        self.stmt_sql = lib.sqlite3_sql
        self.stmt_sql.argtypes = [vp]
        self.stmt_sql.restype = c_char_p
        # For the compiled trace hook (_speedups.StatementList), which calls it itself.
        self.trace_v2_address = ctypes.cast(lib.sqlite3_trace_v2, vp).value or 0
        self.sql_address = ctypes.cast(lib.sqlite3_sql, vp).value or 0
        # CPython's pysqlite_Connection starts with PyObject_HEAD then `sqlite3 *db`
        # (Modules/_sqlite/connection.h, 3.10 to 3.13): the handle is right after the header.
        self._handle_offset = object.__basicsize__

    def handle(self, conn: sqlite3.Connection) -> int:
        """The `sqlite3 *` of an open connection (0 once closed)."""
        return ctypes.c_void_p.from_address(id(conn) + self._handle_offset).value or 0

    def self_test(self) -> None:
        """Check the object layout on a scratch connection before trusting it on real ones:
        the handle must answer like the Python object does."""
        # Imported here, not with this module: a program that imports lockprobe's probe
        # itself (before sqlite3) under `lockprobe trace` must not set off the injected
        # sqlite3 hook while the probe's own modules are half loaded.
        import sqlite3

        major, minor, patch = sqlite3.sqlite_version_info
        if self.libversion_number() != major * 1_000_000 + minor * 1000 + patch:
            raise OSError("the libsqlite3 reached through ctypes is not the one sqlite3 uses")
        conn = sqlite3.connect(":memory:", isolation_level="DEFERRED")
        try:
            db = self.handle(conn)
            if not db or self.get_autocommit(db) != 1:
                raise OSError("unexpected sqlite3.Connection layout")
            conn.execute("CREATE TABLE t(x)")
            conn.execute("INSERT INTO t VALUES (1)")
            if self.get_autocommit(db) != 0 or self.total_changes(db) != conn.total_changes:
                raise OSError("unexpected sqlite3.Connection layout")
            conn.rollback()
            if self.get_autocommit(db) != 1:
                raise OSError("unexpected sqlite3.Connection layout")
        finally:
            conn.close()


_capi_lock = threading.Lock()
_capi: SqliteCApi | None = None
_capi_error: str | None = None


def load_capi() -> tuple[SqliteCApi | None, str | None]:
    """The C API if it can be used safely in this interpreter, else (None, why not)."""
    global _capi, _capi_error
    with _capi_lock:
        if _capi is None and _capi_error is None:
            try:
                api = SqliteCApi()
                api.self_test()
                _capi = api
            except (OSError, AttributeError, ImportError) as exc:
                _capi_error = f"SQLite's C hooks are not reachable from Python here ({exc})"
        return _capi, _capi_error


# While a connection waits, the probe reads the OS lock table to name the holder (it may be
# none of the recorded connections): from retry 3, after 1 + 2 + 5 ms of waiting, so the
# momentary waits of ordinary contention cost nothing; then once a second while the wait
# lasts. The table describes the database, not the connection, so one reading serves every
# waiter of the process: a wait that began before the last reading and is still going skips
# it, and no reading follows another by less than HOLDERS_MIN_GAP_NS (hundreds of waiting
# threads would otherwise all read it at once, and compete for the GIL with the holder).
HOLDERS_FIRST_RETRY = 3
HOLDERS_INTERVAL_NS = 1_000_000_000
HOLDERS_MIN_GAP_NS = 20_000_000
# When each database file's lock table was last read in this process. Module-level because
# the readings are shared by all connections to one file; a race costs one extra reading.
_tables_read_at: dict[str, int] = {}


def read_busy_timeout(conn: sqlite3.Connection) -> int:
    """The connection's busy timeout in ms (PRAGMA busy_timeout reads it without I/O)."""
    row = conn.execute("PRAGMA busy_timeout").fetchone()
    return int(row[0]) if row else 0


class ConnectionProbe:
    """The hooks on one connection and their state: one object per connection, as SQLite's
    callbacks force per-connection state (no globals).

    `emit` receives flat tuples: ("busy", t_ns, conn_id, retry_count, delay_ms), and while a
    wait lasts ("holders", t_ns, conn_id, db, source, locks, note): the OS lock table then.
    """

    __slots__ = (
        "conn_id",
        "timeout_ms",
        "busy_calls",
        "busy_unclaimed",
        "statements",
        "mark_busy",
        "instrumented",
        "reduced_reason",
        "db_path",
        "last_sample_ns",
        "_wait_started_ns",
        "interrupted",
        "_emit",
        "on_sample",
        "_api",
        "_db",
        "_number",
        "_conn_ref",
        "__weakref__",
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        conn_id: str,
        emit: Emit,
        timeout_ms: int | None = None,
        trace_statements: bool = True,
        mark_busy: bool = False,
    ) -> None:
        self.conn_id = conn_id
        self.timeout_ms = read_busy_timeout(conn) if timeout_ms is None else timeout_ms
        self.busy_calls = 0
        # Busy-handler calls no call has claimed yet: the run engine takes them after each call
        # (reading this alone costs less than a count before and after every call).
        self.busy_unclaimed = 0
        self.statements: list[str] = []
        # With mark_busy, each busy-handler call also puts BUSY_MARKs in `statements`.
        self.mark_busy = mark_busy
        self.interrupted: BaseException | None = None
        self._emit = emit
        # Called with this probe after each reading of the lock table during a wait: the
        # tracer then looks at the process's other connections (Tracer.look_at_readers).
        self.on_sample: Callable[[ConnectionProbe], None] | None = None
        # Weakly where the class allows it (the traced and watched subclasses): a connection
        # its program drops without close() is then freed, and closed, at once, as untraced;
        # a reference back from its probe would leave it to the cyclic collector, holding its
        # locks meanwhile.
        self._conn_ref = _referent(conn)
        self._number = 0  # this probe's entry in _PROBES, the busy handler's argument
        api, why = load_capi()
        self._api = api
        self._db = api.handle(conn) if api else 0
        self.instrumented = bool(self._db)
        self.db_path = self._database_file()
        self.last_sample_ns = 0  # when this connection last read the lock table
        self._wait_started_ns = 0
        self.reduced_reason = why
        if self._db:
            self._install_busy_handler()
        if trace_statements:
            compiled = self._compiled_statements()
            if compiled is not None:
                self.statements = compiled
            else:
                conn.set_trace_callback(self.statements.append)

    def _compiled_statements(self) -> Any:
        """The compiled trace hook's StatementList, registered on this connection; None
        where it is not built, not wanted, or the handle is out of reach."""
        speedups = compiled_speedups()
        if speedups is None or self._api is None or not self._db:
            return None
        api = self._api
        if not api.trace_v2_address or not api.sql_address:
            return None
        try:
            statements = speedups.StatementList(self._db, api.trace_v2_address, api.sql_address)
            return statements if statements.install() else None
        except Exception:  # an older build of the extension: the Python hook works the same
            return None

    @property
    def _conn(self) -> Any:
        """The connection, None once it is gone."""
        return self._conn_ref()

    def _install_busy_handler(self) -> None:
        if not self._number:
            self._number = next(_probe_numbers)
            _PROBES[self._number] = weakref.ref(self)
        assert self._api is not None
        self._api.busy_handler(self._db, _BUSY_CALLBACK, self._number)

    def _on_busy(self, _arg: int | None, count: int) -> int:
        """Called by SQLite (GIL re-acquired by ctypes) before each retry of a busy lock."""
        try:
            delay = busy_delay_ms(count, self.timeout_ms)
            self.busy_calls += 1
            self.busy_unclaimed += 1
            if self.mark_busy:
                self.statements.extend(_BUSY_MARKS)
            now = time.monotonic_ns()
            self._emit(("busy", now, self.conn_id, count, delay))
            if count == 0:
                self._wait_started_ns = now
            spent_ns = self._maybe_sample_holders(now) if count >= HOLDERS_FIRST_RETRY else 0
            if delay <= 0:
                return 0
            # The time spent reading the lock table comes off this retry's sleep, so the
            # wait keeps SQLite's schedule.
            time.sleep(max(0.0, delay / 1000 - spent_ns / 1e9))
            return 1
        except BaseException as exc:
            # An exception cannot cross SQLite's C frames (ctypes would print and drop it, and
            # a Ctrl-C would be lost): stop waiting and keep it for the caller to re-raise.
            self.interrupted = exc
            return 0

    def take_interrupt(self) -> BaseException | None:
        """The exception (KeyboardInterrupt...) that ended a wait inside the busy handler."""
        exc, self.interrupted = self.interrupted, None
        return exc

    def _maybe_sample_holders(self, now: int) -> int:
        """Read the lock table during a wait unless a reading already covers it (see
        HOLDERS_FIRST_RETRY); returns the time it took, which the retry's sleep gives back,
        so the wait keeps SQLite's schedule."""
        if not self.db_path:
            return 0
        last = _tables_read_at.get(self.db_path, 0)
        if last >= self._wait_started_ns and now - last < HOLDERS_INTERVAL_NS:
            return 0
        return self._sample_unless_recent(now, last)

    def sample_after_failure(self) -> None:
        """After SQLITE_BUSY with no wait (SQLite refused, or busy_timeout is 0): who holds the
        lock now? Limited like the readings during waits."""
        if self.db_path:
            self._sample_unless_recent(time.monotonic_ns(), _tables_read_at.get(self.db_path, 0))

    def _sample_unless_recent(self, now: int, last: int) -> int:
        if now - last < HOLDERS_MIN_GAP_NS or not self.db_path:
            return 0
        _tables_read_at[self.db_path] = now
        self.sample_holders()
        return time.monotonic_ns() - now

    def sample_holders(self) -> None:
        """Record who holds which lock on this connection's database file now (the OS lock
        table, read without locking), as a "holders" event."""
        if not self.db_path or locktable is None:
            return
        t = time.monotonic_ns()
        try:
            sample = locktable.sample_holders(self.db_path)
        except Exception as exc:  # noqa: BLE001 - the program's wait must go on regardless
            sample = locktable.HolderSample("unavailable", (), f"{type(exc).__name__}: {exc}")
        described = {os.getpid()}
        locks = []
        for lock in sample.locks:
            entry = lock.to_json()
            if lock.pid is not None and lock.pid not in described:
                described.add(lock.pid)  # on its first lock only: events stay small
                entry.update(locktable.describe_pid(lock.pid))
            locks.append(entry)
        self.last_sample_ns = t
        self._emit(("holders", t, self.conn_id, self.db_path, sample.source, locks, sample.note))
        if self.on_sample is not None:
            self.on_sample(self)

    def unfinished_statements(self) -> list[str] | None:
        """The SQL of this connection's statements left unfinished (stepped, not yet reset: a
        cursor not exhausted), which keep its read lock outside any transaction; None when
        the connection could not be looked at now.

        Called from another connection's busy handler, on another thread: the connection may
        be inside a statement right now. Everything is read under its own mutex, taken only
        if free (sqlite3_mutex_try): two waiters looking at each other must never block."""
        api, db = self._api, self._db
        if api is None or not db:
            return None
        mutex = api.db_mutex(db)
        if not mutex or api.mutex_try(mutex) != 0:  # no mutex (not serialized), or in use
            return None
        try:
            found = []
            stmt = api.next_stmt(db, None)
            while stmt:
                if api.stmt_busy(stmt):
                    found.append(os.fsdecode(api.stmt_sql(stmt) or b""))
                stmt = api.next_stmt(db, stmt)
            return found
        finally:
            api.mutex_leave(mutex)

    def _database_file(self) -> str | None:
        """The main database's file name (None for in-memory and temporary databases)."""
        if not self._db or self._api is None:
            return None
        try:
            name = self._api.db_filename(self._db, b"main")
        except (OSError, AttributeError):
            return None
        return os.fsdecode(name) if name else None

    def set_busy_timeout(self, timeout_ms: int) -> None:
        """Follow a new busy timeout (PRAGMA busy_timeout replaces SQLite's busy handler with
        its default one, so ours is installed again with the new value)."""
        self.timeout_ms = timeout_ms
        if self._db:
            self._install_busy_handler()

    def claim(self, start: int = 0) -> tuple[tuple[str, ...], int]:
        """What the call just made ran and waited for, forgotten: the statements traced from
        position `start` of the list on (the run engine leaves its run's earlier calls in
        it), and the busy-handler calls since the last claim."""
        statements = self.statements
        taken = tuple(statements[start:])
        del statements[start : start + len(taken)]  # (the compiled hook may have added more)
        busy, self.busy_unclaimed = self.busy_unclaimed, 0
        if busy and self.mark_busy:
            taken = tuple(sql for sql in taken if sql is not BUSY_MARK)
        return taken, busy

    def take_statements(self) -> tuple[str, ...]:
        """The statements traced since the last call, and forget them, following a PRAGMA
        busy_timeout among them. (The run engine knows the SQL it ran: it drains
        `statements` itself and calls `follow_sql` on that SQL alone, which is cheaper.)"""
        if not self.statements:
            return ()
        taken = take_all(self.statements)
        for sql in taken:
            self.follow_sql(sql)
        return taken

    def follow_sql(self, sql: str) -> None:
        """Follow `sql` if it sets the busy timeout. Plain substring tests first: this runs
        for every call, and lower() would allocate."""
        if "busy_timeout" in sql or "BUSY_TIMEOUT" in sql or "Busy_Timeout" in sql:
            self._follow_busy_timeout_pragma(sql)

    def _follow_busy_timeout_pragma(self, sql: str) -> None:
        text = sql.strip().rstrip(";").lower().replace(" ", "")
        if text.startswith("pragmabusy_timeout=") or text.startswith("pragmamain.busy_timeout="):
            value = text.split("=", 1)[1].strip("()'\"")
            if value.lstrip("-").isdigit():
                self.set_busy_timeout(max(0, int(value)))

    def error_codes(self, exc: sqlite3.Error) -> tuple[int | None, int | None]:
        """(primary, extended) SQLite result codes of a failed call. Python 3.11+ carries them
        on the exception; on 3.10 the connection still has them right after the failure."""
        ext = getattr(exc, "sqlite_errorcode", None)
        if ext is None and self._db and self._api is not None:
            ext = self._api.extended_errcode(self._db) or None
        return error_codes(exc, ext)

    def txn_state(self) -> int | None:
        """sqlite3_txn_state: 0 none, 1 read, 2 write; None when the hooks are unavailable."""
        if not self._db or self._api is None:
            return None
        return int(self._api.txn_state(self._db, None))

    def detach(self) -> None:
        """Remove the hooks, restoring SQLite's default busy handler with the same timeout."""
        conn = self._conn
        with contextlib.suppress(_sqlite3.ProgrammingError, AttributeError):  # closed or gone
            conn.set_trace_callback(None)
        let_go = getattr(self.statements, "detach", None)  # the compiled hook, replaced above
        if let_go is not None:
            let_go()
        self._restore_busy_timeout()

    def _restore_busy_timeout(self) -> None:
        """Give the connection SQLite's own busy handler back, with the same timeout, while it
        is open; and forget this probe's number (the shared callback then finds no probe)."""
        conn = self._conn
        api = self._api
        if conn is not None and self._db and api is not None and api.handle(conn) == self._db:
            api.busy_timeout(self._db, int(self.timeout_ms))
        # A connection gone first (freed by its program) was closed by its deallocation.
        self._db = 0
        _PROBES.pop(self._number, None)

    def __del__(self) -> None:
        # A probe dropped while its connection stays open (a caller that did not keep it, or
        # detach): SQLite's own busy handler, with the same timeout, instead of a callback
        # that would find no probe and give up at once. No SQL runs here (a collection may
        # happen on any thread, mid-statement).
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to protect
            self._restore_busy_timeout()


def error_codes(exc: sqlite3.Error, ext: int | None = None) -> tuple[int | None, int | None]:
    """(primary, extended) result codes without a probe: Python 3.11+ puts the extended code
    on the exception; on 3.10 only the message is left to tell BUSY from LOCKED."""
    if ext is None:
        ext = getattr(exc, "sqlite_errorcode", None)
    if ext is None:
        ext = classify_error_message(str(exc))
    return (ext & 0xFF if ext is not None else None), ext


def classify_error_message(message: str) -> int | None:
    """Best-effort result code from an error message, when no code is available."""
    if message.startswith("database is locked"):
        return 5
    if message.startswith("database table is locked") or message.startswith(
        "database schema is locked"
    ):
        return 6
    return None


def take_all(statements: list[str]) -> tuple[str, ...]:
    """Every statement in `statements`, forgotten: each one by exactly one caller, though
    threads sharing a connection record their calls at once (reading the list, then deleting
    as many, would let two calls report the same statement and drop another's)."""
    take = getattr(statements, "take", None)
    if take is not None:  # the compiled hook's list: taken whole, at once
        return take()
    taken = []
    pop = statements.pop
    for _ in range(len(statements)):
        try:
            taken.append(pop(0))  # one C call: atomic under the GIL
        except IndexError:  # another thread took the rest
            break
    return tuple(taken)


def _referent(conn: Any) -> Callable[[], Any]:
    """A weak reference to `conn`, or, for a class without weak references (a plain
    sqlite3.Connection: the run engine's, a caller's), a strong one that answers the same."""
    try:
        return weakref.ref(conn)
    except TypeError:
        return lambda: conn


# One busy callback for every probe: SQLite passes it the probe's number (the handler's
# argument). No connection has a ctypes thunk of its own, so none can be freed while SQLite
# still points at it, and no probe is left in a reference cycle through one for the cyclic
# collector (a web app opens a connection per request).
_PROBES: dict[int, weakref.ref[ConnectionProbe]] = {}
_probe_numbers = itertools.count(1)


def _dispatch_busy(number: int | None, count: int) -> int:
    ref = _PROBES.get(number or 0)
    probe = ref() if ref is not None else None
    return probe._on_busy(number, count) if probe is not None else 0


_BUSY_CALLBACK = _BusyCallback(_dispatch_busy)
