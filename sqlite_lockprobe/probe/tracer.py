"""The probe inside a traced program (`lockprobe trace`): every `sqlite3.connect` returns an
instrumented connection, and every execute/commit/rollback is recorded as a `call` event with
who made it (process, thread, asyncio task) and where (the first frame in the user's code).

Standard library only: this runs inside the user's interpreter, which may lack lockprobe's
dependencies. `_inject/sitecustomize.py` loads it when the program first imports sqlite3 (and
LOCKPROBE_TRACE_DIR is set). Each process writes its own event file into that directory
(eventfile.py); the instrumented classes are in traced.py, the call-site finder in callsite.py.

What the program sees does not change: connections are instances of a subclass of the class it
asked for (its own `factory=` included), results and exceptions are the original objects, and
the probe keeps SQLite's busy_timeout schedule (probe.py).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from sqlite_lockprobe.events.eventfile import TRACE_KEY, TRACE_OP_BITS, TRACE_OPS, EventFile
from sqlite_lockprobe.events.schema import call_event
from sqlite_lockprobe.probe.callsite import CallSites
from sqlite_lockprobe.probe.capi import (
    ConnectionProbe,
    compiled_speedups,
    error_codes,
    load_capi,
    take_all,
)
from sqlite_lockprobe.probe.traced import (
    NO_ARG,
    PROBE_PATH,
    SQL_BITS,
    connection_subclass,
    cursor_subclass,
)
from sqlite_lockprobe.probe.tracewal import TraceWal

ENV_DIR = "LOCKPROBE_TRACE_DIR"
ENV_DB = "LOCKPROBE_TRACE_DB"
ENV_COMMAND = "LOCKPROBE_TRACE_COMMAND"
ENV_PARENT = "LOCKPROBE_TRACE_PARENT"
# "pid:n" set by a traced process just before exec: the new program keeps the pid, so its
# connections are numbered on from n (connection ids are "c<pid>.<n>").
ENV_NEXT_CONN = "LOCKPROBE_TRACE_NEXT_CONN"

SQL_LIMIT = 4096
# The whole package (probe/'s parent), not this folder: no frame of lockprobe's is a call site.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_WORKER_CACHE_LIMIT = 10_000
_KEY_CACHE_LIMIT = 100_000
# A traced call that went through is recorded in short, (t0, t1, key + op, sql, stmts,
# in_txn, site), where `key` names its connection, worker, thread and task, given once by
# (TRACE_KEY, key, conn, worker, thread, task); stmts is None when the call ran its own
# statement alone (eventfile.py reads them back as `call` events).
# A call that took longer than this is recorded in full, with its call site: it may have
# held a lock that long.
LONG_CALL_NS = 1_000_000
# What the call site finder skips above the application's frame in `_record_full`:
# find, _record_full, Tracer.call and the instrumented method.
_FULL_RECORD_DEPTH = 4
_RECORD_DEPTH = 3  # find, Tracer.record, then the instrumented method (which records itself)


class TraceConfig:
    """What the parent `lockprobe trace` asked for, passed down in the environment (or what
    the in-process recorder asked for: recorder.py, source "record")."""

    def __init__(
        self,
        trace_dir: str,
        db: str | None = None,
        command: str = "",
        parent_pid: int = 0,
        source: str = "trace",
    ) -> None:
        self.trace_dir = trace_dir
        self.db = db  # realpath of the one database to record, None for all
        self.command = command
        self.parent_pid = parent_pid
        self.source = source  # the `meta` event's source: "<source> <command>"

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> TraceConfig | None:
        env = os.environ if environ is None else environ
        trace_dir = env.get(ENV_DIR)
        if not trace_dir:
            return None
        parent = env.get(ENV_PARENT, "")
        return cls(
            trace_dir=trace_dir,
            db=env.get(ENV_DB) or None,
            command=env.get(ENV_COMMAND, ""),
            parent_pid=int(parent) if parent.isdigit() else 0,
        )


def database_path(database: Any, uri: bool) -> str | None:
    """The file a connect() argument names, or None for in-memory and temporary databases.
    Worked out once per name, URI flag and working directory: a URI's parsing and realpath
    cost 10 to 30 us, paid by every connect, and a web app opens a connection per request. (A
    symlink re-pointed while the process runs keeps its first resolution.)"""
    try:
        name = os.fsdecode(database)
    except TypeError:
        return None
    key = (name, uri, "" if os.path.isabs(name) else os.getcwd())
    try:
        return _DATABASE_PATHS[key]
    except KeyError:
        pass
    path = _database_path(name, uri)
    if len(_DATABASE_PATHS) >= _DATABASE_PATHS_KEPT:
        _DATABASE_PATHS.clear()
    _DATABASE_PATHS[key] = path
    return path


def _database_path(name: str, uri: bool) -> str | None:
    if uri and name.startswith("file:"):
        from urllib.parse import parse_qs, unquote

        rest, _, query = name[5:].partition("?")
        rest = rest.split("#", 1)[0]
        if rest.startswith("//"):
            rest = "/" + rest[2:].partition("/")[2]  # file://host/path: the authority is empty
        if parse_qs(query.split("#", 1)[0]).get("mode") == ["memory"]:
            return None
        name = unquote(rest)
    if name in ("", ":memory:"):
        return None
    return os.path.realpath(name)


_DATABASE_PATHS: dict[tuple[str, bool, str], str | None] = {}
_DATABASE_PATHS_KEPT = 256


# One read-only descriptor per database file, kept for the life of the process. POSIX locks
# belong to the process, and closing *any* descriptor of a file drops every lock the process
# holds on it (fcntl(2)): opening and closing the database to read its header would silently
# release the program's own SHARED/RESERVED/PENDING locks. SQLite defers its own closes for
# the same reason (os_unix.c, unixInodeInfo.pUnused). So the header is read with pread on a
# descriptor that is never closed.
_header_fds: dict[str, int] = {}


def read_header(path: str | None) -> tuple[str | None, int | None]:
    """(journal mode, page size) from the database header, read as a plain file: no SQLite
    call, no lock (fileformat2.html: bytes 16-17 page size, 18-19 are 2 in WAL mode)."""
    if not path:
        return None, None
    try:
        fd = _header_fds.get(path)
        if fd is None:
            fd = _header_fds[path] = os.open(path, os.O_RDONLY)
        header = os.pread(fd, 100, 0)
    except OSError:
        return None, None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None, None
    page_size = int.from_bytes(header[16:18], "big")
    return ("wal" if header[18] == 2 else "delete"), (65536 if page_size == 1 else page_size)


class _Connection:
    """Per-connection state (one object per connection, as SQLite's callbacks force), with
    what the hot path needs at hand: the statement list the trace hook fills, the record key
    of the thread last seen making calls, and the open transaction's call site."""

    __slots__ = (
        "__weakref__",
        "conn_id",
        "probe",
        "active",
        "path",
        "statements",
        "ident",
        "key",
        "in_txn",
        "site",
        "folded",
        "fold_statements",
        "last_thread",
    )

    def __init__(self, conn_id: str, probe: ConnectionProbe, path: str | None) -> None:
        self.conn_id = conn_id
        self.probe = probe
        self.active = 0  # thread ident inside a recorded call: nested calls are not recorded
        self.path = path
        self.statements = probe.statements
        self.ident = 0  # the thread whose record key `key` is (0: none yet)
        self.key = 0
        self.in_txn = False  # after the last recorded call
        self.site: str | None = None  # where the open transaction began
        self.folded = 0  # statements folded away (StatementBudget) since the last call
        self.fold_statements = StatementBudget(self)
        self.last_thread = 0  # the thread of the last call recorded in full (or keyed)


class StatementBudget:
    """Keeps the statements one call ran within a fixed budget (issue: one INSERT ... SELECT
    over 1,000,000 rows with a trigger traced 1,000,000 statements into one call). SQLite's
    trace hook appends in C (`list.append`), so the list is folded from outside: after the
    call, and during a long one from SQLite's progress handler, every PROGRESS_OPS virtual
    machine instructions (a call into Python per few ms of SQLite work: nothing measurable).
    What is kept is what the diagnosis reads: the first statements, every one that begins or
    ends a transaction or savepoint, and the last ones; the rest is counted."""

    __slots__ = ("state",)

    LIMIT = 64
    FIRST = 16
    LAST = 16
    PROGRESS_OPS = 50_000

    def __init__(self, state: _Connection) -> None:
        # Weakly: the state holds this budget, and a cycle would leave both (and the probe)
        # to the cyclic collector once the connection is gone.
        self.state = weakref.ref(state)

    def __call__(self) -> int:
        """The progress handler: 0 lets SQLite go on (it never interrupts anything)."""
        with contextlib.suppress(Exception):  # the program's statement must go on
            statements = self.state().statements  # type: ignore[union-attr]
            if len(statements) > self.LIMIT:
                self.fold(statements)
        return 0

    def fold(self, statements: list[str]) -> None:
        """Fold `statements` in place down to at most LIMIT, counting what went. A statement
        equal to the one kept before it goes first: SQLite's trace hook reports a statement
        again, parameter values expanded, for each trigger it fires (a 100 kB INSERT of 100
        rows with one trigger was 201 copies)."""
        count = len(statements)
        middle = statements[self.FIRST : count - self.LAST]
        kept_middle = [s for s in middle if _ends_or_begins(s)]
        room = self.LIMIT - self.FIRST - self.LAST
        if len(kept_middle) > room:
            kept_middle = kept_middle[: room // 2] + kept_middle[len(kept_middle) - room // 2 :]
        statements[self.FIRST : count - self.LAST] = kept_middle
        deduplicated = [s for i, s in enumerate(statements) if i == 0 or s != statements[i - 1]]
        state = self.state()
        if state is not None:
            state.folded += count - len(deduplicated)
        statements[:] = deduplicated


_TRANSACTION_WORDS = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")


class _ThreadEnd:
    """Kept in a thread's threading.local: deleted when the thread ends (CPython clears its
    locals then, before its ident can be given to a new thread), it makes every connection
    forget the record key it kept for that thread."""

    __slots__ = ("states", "ident")

    def __init__(self, states: weakref.WeakSet[_Connection], ident: int) -> None:
        self.states, self.ident = states, ident

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            for state in list(self.states):
                if state.ident == self.ident:
                    state.ident = 0


def _ends_or_begins(statement: str) -> bool:
    """A statement that begins or ends a transaction or a savepoint (kept when folding)."""
    word = statement.lstrip()[:9].upper()
    return word.startswith(_TRANSACTION_WORDS)


class Tracer:
    """Patches sqlite3.connect in this interpreter and records what every connection does."""

    # Read on every call by the compiled method (_speedups.c), at their slot offsets: a
    # lookup in the instance dict cost about 100 instructions each.
    __slots__ = ("_recording", "_get_running_loop", "__dict__", "__weakref__")

    def __init__(self, config: TraceConfig, sink: Any = None) -> None:
        self.config = config
        # Where events go instead of an event file in config.trace_dir: anything with
        # `append(record)` (the in-process recorder's ring, recorder.py). No flusher, no
        # exit hooks: the sink's owner reads it.
        self.sink = sink
        self._recording: Any = None  # the EventFile, or the sink
        self._recording_lock = threading.Lock()
        self._conn_numbers = itertools.count(_first_conn_number())
        # Per thread: me = (worker label, native thread id, serves tasks); behalf = who a
        # driver's thread is running the current call for (aiosqlite).
        self._local = threading.local()
        self._task_workers: dict[tuple[int, str], str] = {}
        self._process_label: str | None = None
        self._connection_classes: dict[type, type] = {}
        self._cursor_classes: dict[type, type] = {}
        self._original_connect: Callable[..., Any] | None = None
        self._sqlite3: Any = None
        self._capi_ready = False
        self._aiosqlite_bridged = False
        self._capi_loader = 0  # thread ident loading the C API: its connects are not traced
        self._exit_hooked = False
        self._first_db: str | None = None
        # Record keys of callers (conn, worker, thread, task): see TRACE_KEY.
        self._keys: dict[tuple[Any, ...], int] = {}
        self._key_numbers = itertools.count(1)
        self._get_running_loop: Callable[[], Any] = _NO_LOOP
        self._states: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._thread_names: dict[str, int] = {}  # threads seen per label (_new_thread)
        self.call_sites = CallSites((PACKAGE_DIR,))
        self._site = self.call_sites.find
        self.wal = TraceWal(self.emit)  # samples on the event file's flusher tick

    # ------------------------------------------------------------------ install / uninstall

    def install(self, sqlite3_module: Any, process_hooks: bool = True) -> None:
        """Patch `sqlite3.connect` and `sqlite3.dbapi2.connect` (the same C function; Django and
        SQLAlchemy call it through dbapi2, aiosqlite through sqlite3). `process_hooks`: also
        hook fork and SIGTERM, as a traced process does; the in-process recorder, which can
        be stopped, leaves the program's process alone (neither can be undone)."""
        if self._original_connect is not None:
            return
        dbapi2 = sys.modules.get("sqlite3.dbapi2", sqlite3_module)
        self._sqlite3 = dbapi2
        self._original_connect = dbapi2.connect
        sites = self.call_sites
        sites.skip_dirs = (*sites.skip_dirs, os.path.dirname(dbapi2.__file__) + os.sep)
        connect = self._make_connect(dbapi2.connect)
        for module in {id(m): m for m in (sqlite3_module, dbapi2)}.values():
            module.connect = connect
        if not process_hooks:
            return
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )
        _flush_on_sigterm(self)

    def uninstall(self) -> None:
        """Restore sqlite3.connect (connections already made stay instrumented)."""
        if self._original_connect is None:
            return
        for name in ("sqlite3", "sqlite3.dbapi2"):
            module = sys.modules.get(name)
            if module is not None:
                setattr(module, "connect", self._original_connect)  # noqa: B010 - a module
        self._original_connect = None

    def _make_connect(self, original: Callable[..., Any]) -> Callable[..., Any]:
        tracer = self

        def connect(*args: Any, **kwargs: Any) -> Any:
            if tracer._capi_loader == threading.get_ident():
                return original(*args, **kwargs)
            with contextlib.suppress(Exception):  # never let the probe break a connect
                args, kwargs = tracer._with_traced_factory(args, kwargs)
            return original(*args, **kwargs)

        connect.__doc__ = original.__doc__
        connect.__name__ = getattr(original, "__name__", "connect")
        connect.__qualname__ = connect.__name__
        connect.__wrapped__ = original  # type: ignore[attr-defined]
        return connect

    def _with_traced_factory(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """connect()'s arguments with `factory` replaced by its instrumented subclass, or
        unchanged for databases that are not recorded (or arguments connect() will refuse)."""
        if not self.records(args, kwargs):
            return args, kwargs
        if not self._capi_ready:
            self._load_capi()
        if not self._aiosqlite_bridged and "aiosqlite.core" in _modules:
            self.bridge_aiosqlite()
        if len(args) > 5:
            base = args[5]
            args = (*args[:5], self.connection_class(base), *args[6:])
        else:
            base = kwargs.get("factory", self._sqlite3.Connection)
            kwargs = {**kwargs, "factory": self.connection_class(base)}
        return args, kwargs

    def records(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether connect()'s database is one this tracer records (a file, and the one of
        the `db` filter when there is one)."""
        database = args[0] if args else kwargs.get("database")
        if database is None:
            return False
        uri = args[7] if len(args) > 7 else kwargs.get("uri", False)
        try:
            return self.config.db is None or database_path(database, bool(uri)) == self.config.db
        except Exception:  # arguments connect() itself will refuse
            return False

    def opening(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, str, int]:
        """A connection being instrumented, from connect()'s arguments: its database file
        (None: in memory), its id and its busy timeout in ms. The first database becomes the
        process's, and its `meta` event is recorded first."""
        database = args[0] if args else kwargs.get("database")
        uri = args[7] if len(args) > 7 else kwargs.get("uri", False)
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout", 5.0)
        path = database_path(database, bool(uri))
        if self._first_db is None and path is not None:
            self._first_db = path
        self.recording  # noqa: B018 - the process's meta event comes first
        conn_id = f"c{os.getpid()}.{next(self._conn_numbers)}"
        return path, conn_id, max(0, int(float(timeout) * 1000))

    def emit_open(
        self,
        conn: Any,
        conn_id: str,
        timeout_ms: int,
        journal_mode: str | None,
        probe: ConnectionProbe,
        path: str | None,
    ) -> None:
        """The `open` event of an instrumented connection."""
        worker, _, _, _ = self._who()
        self.emit(
            (
                "open",
                time.monotonic_ns(),
                conn_id,
                worker,
                "",
                os.getpid(),
                timeout_ms,
                conn.isolation_level,
                journal_mode,
                probe.instrumented,
                None if probe.instrumented else probe.reduced_reason,
                path,
            )
        )

    def _load_capi(self) -> None:
        """Load and self-test the C API once; its own scratch connection is not traced."""
        self._capi_loader = threading.get_ident()
        try:
            load_capi()
        finally:
            self._capi_loader = 0
            self._capi_ready = True

    # --------------------------------------------------------------------- recording

    @property
    def recording(self) -> Any:
        recording = self._recording
        if recording is None:
            with self._recording_lock:
                if self._recording is None:
                    self._recording = self._start_recording()
                recording = self._recording
        return recording

    def emit(self, record: tuple[Any, ...]) -> None:
        """Record one event; never raises (it also runs inside SQLite's busy handler)."""
        recording = self._recording
        try:  # noqa: SIM105 - the hot path: a try costs nothing there, suppress() does
            (recording or self.recording).append(record)
        except Exception:
            pass

    def _start_recording(self) -> Any:
        sink = self.sink
        recording = EventFile.in_directory(self.config.trace_dir) if sink is None else sink
        db = self.config.db or self._first_db
        journal_mode, page_size = read_header(db)
        recording.append(self._meta(db, journal_mode if self.config.db else None, page_size))
        if sink is not None:
            return sink
        if not self._exit_hooked:
            self._exit_hooked = True
            atexit.register(self.flush_at_exit)
            _wrap_os_exits(self)
        recording.tick = self.wal.tick
        # The compiled probe keeps its short records in C, and the flusher packs them.
        recording.pack = getattr(compiled_speedups(), "pack_records", None)
        recording.start_flusher()
        return recording

    def record_into(self, sink: Any) -> None:
        """Record into `sink` from now on (anything with `append(record)`): the in-process
        recorder hands over a sink that keeps nothing when it stops, so the connections it
        instrumented stop recording (they, and the compiled methods, append to whatever
        `_recording` is)."""
        self.sink = self._recording = sink

    def flush(self) -> None:
        if self._recording is not None:
            self._recording.flush()

    def before_exec(self) -> str:
        """Write what is recorded (an exec that fails, as execvp's tries do, keeps tracing);
        returns the ENV_NEXT_CONN value for the new program."""
        self.flush()
        return f"{os.getpid()}:{next(self._conn_numbers)}"

    def flush_on_signal(self) -> None:
        """Write what is recorded, from a signal handler. It may have interrupted this very
        thread inside a flush (at exit, before exec), whose lock it then cannot take: it gives
        up after 1 s. The flusher is left running (stopping it would wait for it, and it may
        be waiting for that lock)."""
        recording = self._recording
        if recording is not None:
            recording.flush(timeout=1.0)

    def flush_at_exit(self) -> None:
        recording = self._recording
        if recording is not None:
            recording.stop_flusher()
            recording.flush()

    def _before_fork(self) -> None:
        # No flusher thread may hold the recorder's lock across fork, and a process with no
        # extra thread forks without Python 3.12's multi-threaded fork warning.
        recording = self._recording
        self._flusher_was_running = recording.stop_flusher() if recording else False

    def _after_fork_in_parent(self) -> None:
        if self._recording is not None and self._flusher_was_running:
            self._recording.start_flusher()

    def _after_fork_in_child(self) -> None:
        # The parent writes what it recorded; this process starts its own file on first use.
        if self._recording is not None:
            self._recording.forget()
        self._recording = None
        self._recording_lock = threading.Lock()
        self._local = threading.local()
        self._task_workers = {}
        self._process_label = None
        # Record keys are given in the parent's file: this process gives its own.
        self._keys = {}
        self._thread_names = {}
        for state in list(self._states):
            state.ident = 0
        self.wal.forget_connections()

    # ------------------------------------------------------------------ connections

    def connection_class(self, base: type) -> type:
        """The instrumented subclass of a connection class (cached per class)."""
        cls = self._connection_classes.get(base)
        if cls is None:
            cls = self._connection_classes[base] = connection_subclass(self, base)
        return cls

    def cursor_class(self, base: type) -> type:
        cls = self._cursor_classes.get(base)
        if cls is None:
            cls = self._cursor_classes[base] = cursor_subclass(self, base)
        return cls

    def on_open(self, conn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Instrument a new connection and record its `open` event."""
        path, conn_id, timeout_ms = self.opening(args, kwargs)
        probe = ConnectionProbe(conn, conn_id, self.emit, timeout_ms=timeout_ms)
        state = _Connection(conn_id, probe, path)
        journal_mode, _ = read_header(path)
        self.emit_open(conn, conn_id, timeout_ms, journal_mode, probe, path)
        self.keep_statement_budget(conn, state)
        self._states.add(state)
        probe.on_sample = self.look_at_readers
        conn._lockprobe = state
        if path is not None:
            self.wal.opened(path)

    def look_at_readers(self, waiter: ConnectionProbe) -> None:
        """While a connection waits (at each reading of the OS lock table), record every
        other connection of this process to the same file that keeps a read lock through a
        statement left unfinished outside a transaction: a cursor not exhausted, in legacy
        autocommit (no BEGIN), holds SHARED (or a WAL snapshot) until it is. No call marks
        it, so it is seen here, at the moment it matters, as an `unfinished` event with
        where its thread is now (the code that has not finished reading)."""
        frames: dict[int, Any] | None = None
        for state in list(self._states):
            probe = state.probe
            if probe is waiter or probe.db_path != waiter.db_path:
                continue
            try:
                if probe._conn.in_transaction:
                    continue  # its transaction's hold covers it
            except Exception:  # closed meanwhile
                continue
            statements = probe.unfinished_statements()
            if not statements:
                continue
            if frames is None:
                frames = sys._current_frames()
            thread = state.ident or state.last_thread
            frame = frames.get(thread) if thread else None
            site = self.call_sites.find_from(frame) if frame is not None else None
            now = time.monotonic_ns()
            for sql in statements:
                self.emit(("unfinished", now, state.conn_id, _sql_text(sql), site))

    def keep_statement_budget(self, conn: Any, state: _Connection) -> Any:
        """Install the progress handler that keeps a long call's statements within budget."""
        return self._sqlite3.Connection.set_progress_handler(
            conn, state.fold_statements, StatementBudget.PROGRESS_OPS
        )

    def on_close(self, state: _Connection) -> None:
        self.wal.closed(state.path)  # first: no sample of it is later than its close event
        self.emit(("close", time.monotonic_ns(), state.conn_id))

    def call(
        self,
        state: _Connection,
        target: Any,
        conn: Any,
        method: Callable[..., Any],
        op: int,
        sql: Any,
        a1: Any = NO_ARG,
        a2: Any = NO_ARG,
    ) -> Any:
        """Run one call into sqlite3 exactly as asked (`method(target, a1, a2)`, the arguments
        given) and record it: the general path, for calls of any shape and any SQL. The
        result and any exception are the original objects: the exception is re-raised
        unchanged. (The instrumented methods make the common calls themselves, the same way,
        and record them with `record`: traced.py.)"""
        ident = get_ident()
        if state.active == ident:  # a call made by a recorded call: the outer one records it
            return _invoke(method, target, a1, a2)
        special = sql_bits(sql)
        if special & _READS_BUSY_TIMEOUT:
            method = self._reporting_busy_timeout(state, conn, method)
        state.active = ident
        t0 = monotonic_ns()
        try:
            result = _invoke(method, target, a1, a2)
        except BaseException as exc:
            state.active = 0
            interrupt = self.failed(state, conn, op, sql, t0, exc)
            if interrupt is not None:
                raise interrupt  # noqa: B904 - chained to the SQLite error, as untraced
            raise
        t1 = monotonic_ns()
        state.active = 0
        if special:
            self._record_full(state, conn, op, sql, t0, t1, None, special)
        else:
            self.record(state, conn, op, sql, t0, t1, ident)
        return result

    def record(
        self, state: _Connection, conn: Any, op: int, sql: Any, t0: int, t1: int, ident: int
    ) -> None:
        """Record a call that went through (its SQL plain: sql_bits 0). The hot path: this
        runs for every statement the program executes. A call that did not wait, did not open
        a transaction, did not take long and stayed within the statement budget is one short
        record; any other is recorded in full (`_record_full`)."""
        try:
            in_txn = conn.in_transaction
            statements = state.statements
            if (
                state.probe.busy_unclaimed
                or state.folded
                or len(statements) > _BUDGET_LIMIT
                or t1 - t0 > LONG_CALL_NS
            ):
                self._record_full(state, conn, op, sql, t0, t1, None, 0)
                return
            if state.ident == ident and self._get_running_loop() is None:
                key = state.key
                site = state.site
            else:
                key, site = self._key(state, ident)
            if in_txn:
                if not state.in_txn:  # it began a transaction: where, for all its calls
                    state.in_txn = True
                    site = state.site = site or self._site(_RECORD_DEPTH)
            elif state.in_txn:
                state.in_txn = False
                state.site = None
            # One statement is the call's own: its SQL is kept, not its parameter values.
            # Each statement is taken by one call: threads may share the connection.
            stmts: tuple[str, ...] | None = None
            if len(statements) == 1:
                try:
                    del statements[0]  # one C call: atomic under the GIL
                except IndexError:  # another thread's call took it
                    stmts = ()
            else:
                stmts = take_all(statements)
            (self._recording or self.recording).append((t0, t1, key + op, sql, stmts, in_txn, site))
        except Exception:  # noqa: S110 - a recording problem must never surface in the program
            pass

    def failed(
        self, state: _Connection, conn: Any, op: int, sql: Any, t0: int, exc: BaseException
    ) -> BaseException | None:
        """Record a call that raised; returns the exception that ended its wait inside the
        busy handler (Ctrl-C...), which the caller raises instead, or None."""
        t1 = monotonic_ns()
        interrupt = state.probe.take_interrupt()
        # An interrupted wait is recorded as what the program sees: the interruption, not the
        # SQLITE_BUSY that ending the wait early produced.
        self._record_full(state, conn, op, sql, t0, t1, interrupt or exc, sql_bits(sql))
        return interrupt

    def _follow_asyncio(self) -> None:
        """Once asyncio is imported, `_get_running_loop` is asyncio's own (a C call); until
        then, a C call that returns None. Checked on the paths that are not hot."""
        if self._get_running_loop is _NO_LOOP:
            asyncio = _modules.get("asyncio")
            if asyncio is not None:
                self._get_running_loop = asyncio._get_running_loop

    def _key(self, state: _Connection, ident: int) -> tuple[int, str | None]:
        """The record key of who calls now on this connection (thread, task, worker), and the
        call site a driver's thread was given for it (aiosqlite). A key is given once per
        distinct caller by a TRACE_KEY event, and kept on the connection while the same
        thread goes on calling outside an event loop."""
        self._follow_asyncio()
        worker, thread, task, site = self._who()
        if site is None:
            site = state.site
        who = (state.conn_id, worker, thread, task)
        key = self._keys.get(who)
        if key is None:
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            key = self._keys[who] = next(self._key_numbers) << TRACE_OP_BITS
            self.emit((TRACE_KEY, key, *who))
        local = self._local
        if task is None and not local.me[2]:
            # Kept while this thread goes on calling. A thread's ident is reused by the next
            # thread once it has ended: its end forgets what was kept (_ThreadEnd).
            if getattr(local, "end", None) is None:
                local.end = _ThreadEnd(self._states, ident)
            state.ident, state.key = ident, key
        else:
            state.last_thread = ident
            state.ident = 0  # a task's: looked up again on the next call
        return key, site

    def _reporting_busy_timeout(
        self, state: _Connection, conn: Any, method: Callable[..., Any]
    ) -> Callable[..., Any]:
        """`method`, run with SQLite's own busy handler: installing the probe's makes SQLite
        report a busy_timeout of 0 (sqlite3_busy_handler resets it, main.c), so a statement
        that reads it runs with SQLite's handler and the same timeout, then the probe's is
        installed again."""
        probe = state.probe
        raw_execute = self._sqlite3.Connection.execute

        def reporting(target: Any, *args: Any, **kwargs: Any) -> Any:
            restore = f"PRAGMA busy_timeout = {int(probe.timeout_ms)}"
            try:
                raw_execute(conn, restore)
                if probe.statements and probe.statements[-1] == restore:
                    probe.statements.pop()  # not the program's statement
            except Exception:  # closed: the program's own call fails the same way
                return method(target, *args, **kwargs)
            try:
                return method(target, *args, **kwargs)
            finally:
                probe.set_busy_timeout(probe.timeout_ms)

        return reporting

    def _record_full(
        self,
        state: _Connection,
        conn: Any,
        op: int,
        sql: Any,
        t0: int,
        t1: int,
        exc: BaseException | None,
        special: int,
    ) -> None:
        """Record a call as a full `call` event: one that failed, waited, opened a
        transaction (its call site is found now, and kept for the transaction's other calls),
        took long, ran a statement that changes what the probe follows, or ran more
        statements than the budget keeps."""
        try:
            probe = state.probe
            err = ext = msg = None
            if exc is not None:
                if isinstance(exc, self._sqlite3.Error):
                    msg = str(exc)
                    err, ext = probe.error_codes(exc) if probe.instrumented else error_codes(exc)
                else:
                    msg = f"{type(exc).__name__}: {exc}"
            try:
                in_txn = bool(conn.in_transaction)
            except Exception:  # closed meanwhile
                in_txn = False
            self._follow_asyncio()
            statements = state.statements
            if len(statements) > StatementBudget.LIMIT:
                state.fold_statements.fold(statements)
            folded, state.folded = state.folded, 0
            taking = probe.take_statements if special & _MENTIONS_TIMEOUT else None
            stmts = taking() if taking else take_all(statements)
            busy, probe.busy_unclaimed = probe.busy_unclaimed, 0
            worker, thread, task, site = self._who()
            if site is None:
                site = self._site(_FULL_RECORD_DEPTH)
            if not in_txn:
                state.site = None
            elif not state.in_txn:
                state.site = site  # the transaction's calls that go through name it
            state.in_txn = in_txn
            state.last_thread = get_ident()
            state.ident = 0  # the next call finds its record key again
            self.emit(
                call_event(
                    t0=t0,
                    t1=t1,
                    conn=state.conn_id,
                    worker=worker,
                    thread=thread,
                    task=task,
                    op=TRACE_OPS[op],
                    sql=_sql_text(sql),
                    stmts=stmts,
                    busy=busy,
                    err=err,
                    ext=ext,
                    msg=msg,
                    in_txn=in_txn,
                    site=site,
                    folded=folded,
                )
            )
            if special & _JOURNAL_MODE:
                self._follow_journal_mode(state)
            if err == _SQLITE_BUSY and probe.db_path:
                self.look_at_readers(probe)  # who still keeps a read lock, as the wait ends
        except Exception:  # a recording problem must never surface in the program
            pass
        if exc is None and state.probe.interrupted is not None:
            raise state.probe.take_interrupt()  # type: ignore[misc]  # Ctrl-C during a wait

    def _meta(
        self, db: str | None, journal_mode: str | None, page_size: int | None
    ) -> tuple[Any, ...]:
        return (
            "meta",
            time.monotonic_ns(),
            os.getpid(),
            f"{self.config.source} {self.config.command}".rstrip(),
            db,
            journal_mode,
            page_size,
            None,
            _PYTHON_VERSION,
            self._sqlite3.sqlite_version if self._sqlite3 else None,
            sys.platform,
            PROBE_PATH,
        )

    def _follow_journal_mode(self, state: _Connection) -> None:
        """After `PRAGMA journal_mode=...`, record the database's mode from its header."""
        journal_mode, page_size = read_header(state.path)
        if journal_mode is not None:
            self.emit(self._meta(state.path, journal_mode, page_size))

    # --------------------------------------------------------------------- identity

    def _who(self) -> tuple[str, int, str | None, str | None]:
        """(worker label, native thread id, asyncio task name, call site if already known) of
        the calling code. The thread's part is computed once per thread (threading.local)."""
        local = self._local
        try:
            worker, thread, serves_tasks, announced = local.me
        except AttributeError:
            worker, thread, serves_tasks, announced = local.me = self._new_thread()
        if serves_tasks and local.behalf is not None:
            worker, task, site = local.behalf
            return worker, thread, task, site
        asyncio = _modules.get("asyncio")
        if asyncio is not None:
            loop = asyncio._get_running_loop()
            if loop is not None:
                task = asyncio.current_task(loop)
                if task is not None:
                    name = task.get_name()
                    label = self._task_workers.get((thread, name))
                    if label is None:
                        label = self._new_task_worker(thread, name)
                    return label, thread, name, None
        if not announced:
            self._announce_thread()
        return worker, thread, None, None

    def _new_thread(self) -> tuple[str, int, bool, bool]:
        """This thread's (worker label, native id, serves tasks, announced): its `worker`
        event waits until a call is made for the thread itself, not for one of its tasks.
        aiosqlite's driver threads are never announced: they make calls only on behalf of
        the tasks that await them (bridge_aiosqlite), so they are no worker of their own."""
        prefix = self._process()
        name = threading.current_thread().name
        label = f"{prefix}/{name}" if prefix else name
        # Threads of one name (a pool's: "AnyIO worker thread") are workers of their own:
        # the second is "name#2", and so on; their group is the name.
        seen = self._thread_names.get(label, 0) + 1
        self._thread_names[label] = seen
        if seen > 1:
            label = f"{label}#{seen}"
        if "aiosqlite.core" in _modules and _in_aiosqlite_driver():
            self._local.behalf = None
            return label, threading.get_native_id(), True, True
        return label, threading.get_native_id(), False, False

    def _announce_thread(self) -> None:
        worker, thread, serves_tasks, _ = self._local.me
        self._local.me = (worker, thread, serves_tasks, True)
        self._announce(worker, "thread", thread, None)

    def bridge_aiosqlite(self) -> None:
        """aiosqlite runs every call on its own thread: wrap its `Connection._execute` (which
        runs in the caller's task) so the call is recorded with that task's name and the
        application's call site, as if made there. Its thread stays the real one."""
        self._aiosqlite_bridged = True
        core = _modules.get("aiosqlite.core")
        cls = getattr(core, "Connection", None)
        original: Any = getattr(cls, "_execute", None)
        code = getattr(original, "__code__", None)
        if code is None or not code.co_flags & 0x80:  # CO_COROUTINE: the shape we know
            return
        tracer = self

        async def _execute(self: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            worker, _, task, _ = tracer._who()
            behalf = (worker, task, tracer._site())
            local = tracer._local

            def on_behalf(*a: Any, **k: Any) -> Any:
                try:
                    me = local.me
                except AttributeError:
                    me = local.me = tracer._new_thread()
                if not me[2]:
                    local.me = (me[0], me[1], True, me[3])
                local.behalf = behalf
                try:
                    return fn(*a, **k)
                finally:
                    local.behalf = None

            return await original(self, on_behalf, *args, **kwargs)

        _execute.__wrapped__ = original  # type: ignore[attr-defined]
        _execute.__lockprobe__ = True  # type: ignore[attr-defined]
        _execute.__doc__ = original.__doc__
        cls._execute = _execute  # type: ignore[union-attr]

    def _new_task_worker(self, thread: int, task: str) -> str:
        """The worker label of an asyncio task (after the process's name for processes the
        program started), announced by its `worker` event."""
        prefix = self._process()
        worker = f"{prefix}/{task}" if prefix else task
        if len(self._task_workers) >= _WORKER_CACHE_LIMIT:
            self._task_workers.clear()
        self._task_workers[(thread, task)] = worker
        self._announce(worker, "coroutine", thread, task)
        return worker

    def _announce(self, worker: str, kind: str, thread: int, task: str | None) -> None:
        """The `worker` event: its group is the label without numbering (Thread-3 -> Thread)."""
        import re

        group = re.sub(r"[-_# ]?\d+", "", worker) or worker
        self.emit(("worker", time.monotonic_ns(), worker, group, kind, os.getpid(), thread, task))

    def _process(self) -> str:
        """'' for the traced program's own process; a name for the processes it started."""
        if self._process_label is None:
            label = ""
            if os.getppid() != self.config.parent_pid:
                mp = sys.modules.get("multiprocessing")
                name = mp.current_process().name if mp is not None else "MainProcess"
                label = name if name != "MainProcess" else f"pid {os.getpid()}"
            self._process_label = label
        return self._process_label


def _in_aiosqlite_driver() -> bool:
    """Whether this thread is an aiosqlite connection's driver thread (its loop,
    `_connection_worker_thread`, is below on the stack) whose calls are bridged to tasks."""
    core = _modules.get("aiosqlite.core")
    execute = getattr(getattr(core, "Connection", None), "_execute", None)
    if not getattr(execute, "__lockprobe__", False):
        return False
    frame: FrameType | None = _getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_connection_worker_thread" and frame.f_globals is vars(core):
            return True
        frame = frame.f_back
    return False


def _sql_text(sql: Any) -> str:
    text = sql if type(sql) is str else repr(sql)
    return text if len(text) <= SQL_LIMIT else text[:SQL_LIMIT] + "..."


def reads_busy_timeout(sql: str) -> bool:
    """A statement that reads busy_timeout (`PRAGMA busy_timeout`, `pragma_busy_timeout`)
    rather than setting it."""
    text = sql.lower().replace(" ", "").replace("\n", "").replace("\t", "")
    if "busy_timeout" not in text:
        return False
    return "pragma_busy_timeout" in text or "=" not in text and "busy_timeout(" not in text


def _first_conn_number() -> int:
    pid, _, number = os.environ.get(ENV_NEXT_CONN, "").partition(":")
    return int(number) if pid == str(os.getpid()) and number.isdigit() else 1


def _flush_on_sigterm(tracer: Tracer) -> None:
    """Write what is recorded when SIGTERM ends this process, then end it as SIGTERM would:
    multiprocessing's Pool.terminate(), a supervisor's stop and `kill` end a process that way,
    and its last FLUSH_SECONDS of events were lost. Only where SIGTERM keeps its default action
    (the program's own handler is left alone) and from the main thread (signal.signal's rule);
    forked children inherit it. The handler runs when the main thread next runs Python code."""
    import signal

    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, functools.partial(_flush_then_terminate, tracer))
    except (ValueError, OSError, AttributeError):  # not the main thread; no SIGTERM here
        return


def _flush_then_terminate(tracer: Tracer, signum: int, frame: Any) -> None:
    import signal

    with contextlib.suppress(Exception):
        tracer.flush_on_signal()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _wrap_os_exits(tracer: Tracer) -> None:
    """Flush before os._exit (multiprocessing's forked children end that way, skipping atexit)
    and before exec (the new program replaces this one and its unwritten events; it gets the
    next connection number). os.execl/execlp/execvp/execle/execvpe all end in these two."""
    if getattr(os._exit, "__lockprobe__", False):
        return
    original_exit, original_execv, original_execve = os._exit, os.execv, os.execve

    def _exit(*args: Any, **kwargs: Any) -> Any:
        tracer.flush_at_exit()
        return original_exit(*args, **kwargs)

    def execv(*args: Any, **kwargs: Any) -> Any:
        os.environ[ENV_NEXT_CONN] = tracer.before_exec()
        return original_execv(*args, **kwargs)

    def execve(*args: Any, **kwargs: Any) -> Any:
        marker = tracer.before_exec()
        with contextlib.suppress(Exception):  # a bad env argument fails in execve, as untraced
            if len(args) >= 3:
                args = (*args[:2], {**args[2], ENV_NEXT_CONN: marker}, *args[3:])
            elif "env" in kwargs:
                kwargs = {**kwargs, "env": {**kwargs["env"], ENV_NEXT_CONN: marker}}
        return original_execve(*args, **kwargs)

    for wrapper, original in (
        (_exit, original_exit),
        (execv, original_execv),
        (execve, original_execve),
    ):
        wrapper.__lockprobe__ = True  # type: ignore[attr-defined]
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        wrapper.__doc__ = original.__doc__
        setattr(os, original.__name__, wrapper)


_PYTHON_VERSION = "{}.{}.{}".format(*sys.version_info[:3])  # in each meta event
# SQL the hot path must not just record, by a bit each (classified once per SQL text: a
# text that is none of these maps to 0 in `_special`).
_READS_BUSY_TIMEOUT = 1  # runs with SQLite's own busy handler (see _reporting_busy_timeout)
_MENTIONS_TIMEOUT = 2  # may set busy_timeout: the probe follows it
_JOURNAL_MODE = 4  # may change the journal mode: read it again from the header
_SLOW = 8  # not a str, or longer than SQL_LIMIT: recorded with its text cut
_SQLITE_BUSY = 5
_NO_LOOP = type(None)  # called, returns None: no event loop (see Tracer._follow_asyncio)
_SPECIAL_CACHE_LIMIT = 4096
_special = SQL_BITS
_special_get = _special.get
_BUDGET_LIMIT = StatementBudget.LIMIT


def sql_bits(sql: Any) -> int:
    """The bits above for one SQL text, cached (a program usually runs few distinct texts).
    The instrumented methods look them up in `_special` themselves first."""
    if type(sql) is not str:
        return _SLOW
    special = _special_get(sql)
    if special is not None:
        return special
    special = _SLOW if len(sql) > SQL_LIMIT else 0
    if "imeout" in sql or "IMEOUT" in sql:
        special |= _MENTIONS_TIMEOUT
        if reads_busy_timeout(sql):
            special |= _READS_BUSY_TIMEOUT
    if "ournal_mode" in sql or "OURNAL_MODE" in sql:
        special |= _JOURNAL_MODE
    if len(_special) >= _SPECIAL_CACHE_LIMIT:
        _special.clear()
    _special[sql] = special
    return special


def _invoke(method: Callable[..., Any], target: Any, a1: Any, a2: Any) -> Any:
    """`method(target, a1, a2)` with only the arguments given (NO_ARG: not given)."""
    if a1 is NO_ARG:
        return method(target)
    if a2 is NO_ARG:
        return method(target, a1)
    return method(target, a1, a2)


_modules = sys.modules
_getframe = sys._getframe
get_ident = threading.get_ident
monotonic_ns = time.monotonic_ns
_tracer: Tracer | None = None


def install_from_environment(sqlite3_module: Any) -> Tracer | None:
    """Trace this interpreter if LOCKPROBE_TRACE_DIR is set. Called by the injected
    sitecustomize once `sqlite3.dbapi2` has been imported, before `sqlite3` copies its names,
    so programs that never use sqlite3 pay nothing."""
    global _tracer
    config = TraceConfig.from_environment()
    if config is None:
        return None
    if _tracer is None:
        _tracer = Tracer(config)
    _tracer.install(sqlite3_module)
    return _tracer
