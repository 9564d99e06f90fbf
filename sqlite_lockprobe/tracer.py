"""The probe inside a traced program (`lockprobe trace`): every `sqlite3.connect` returns an
instrumented connection, and every execute/commit/rollback is recorded as a `call` event with
who made it (process, thread, asyncio task) and where (the first frame in the user's code).

Standard library only: this runs inside the user's interpreter, which may lack lockprobe's
dependencies. It is loaded by `_inject/sitecustomize.py` when LOCKPROBE_TRACE_DIR is set, and
writes one JSONL event file per process into that directory.

What the program sees does not change: connections are instances of a subclass of the class it
asked for (its own `factory=` included), results and exceptions are the original objects, and
the probe keeps SQLite's busy_timeout schedule (probe.py).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.events import EventRecorder
from sqlite_lockprobe.probe import ConnectionProbe, error_codes, load_capi

ENV_DIR = "LOCKPROBE_TRACE_DIR"
ENV_DB = "LOCKPROBE_TRACE_DB"
ENV_COMMAND = "LOCKPROBE_TRACE_COMMAND"
ENV_PARENT = "LOCKPROBE_TRACE_PARENT"

FLUSH_SECONDS = 0.25
SQL_LIMIT = 4096
_WORKER_CACHE_LIMIT = 10_000

# Frames from these places are never "the user's call site": the ORMs and drivers between the
# application and sqlite3, and the machinery that runs it (stdlib files are recognised apart).
LIBRARY_PARTS = (
    "/django/db/",
    "/sqlalchemy/",
    "/sqlmodel/",
    "/aiosqlite/",
    "/asgiref/",
    "/peewee.py",
    "/playhouse/",
    "/pony/orm/",
    "/tortoise/",
)
_SITE_DIRS = ("/site-packages/", "/dist-packages/")
_SKIP = "skip"  # sqlite3 and lockprobe itself: not even a fallback call site


@dataclass(frozen=True)
class TraceConfig:
    """What the parent `lockprobe trace` asked for, passed down in the environment."""

    trace_dir: str
    db: str | None = None  # realpath of the one database to record, None for all
    command: str = ""
    parent_pid: int = 0

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
    """The file a connect() argument names, or None for in-memory and temporary databases."""
    try:
        name = os.fsdecode(database)
    except TypeError:
        return None
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


def read_header(path: str | None) -> tuple[str | None, int | None]:
    """(journal mode, page size) from the database header, read as a plain file: no SQLite
    call, no lock (fileformat2.html: bytes 16-17 page size, 18-19 are 2 in WAL mode)."""
    if not path:
        return None, None
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return None, None
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None, None
    page_size = int.from_bytes(header[16:18], "big")
    return ("wal" if header[18] == 2 else "delete"), (65536 if page_size == 1 else page_size)


class _Connection:
    """Per-connection state (one object per connection, as SQLite's callbacks force)."""

    __slots__ = ("conn_id", "probe", "active", "path")

    def __init__(self, conn_id: str, probe: ConnectionProbe, path: str | None) -> None:
        self.conn_id = conn_id
        self.probe = probe
        self.active = 0  # thread ident inside a recorded call: nested calls are not recorded
        self.path = path


class _Recording:
    """This process's event file, and the background thread that flushes it."""

    def __init__(self, tracer: Tracer) -> None:
        pid = os.getpid()
        name = f"events-{pid}-{time.monotonic_ns()}.jsonl"  # exec keeps the pid: unique name
        self.recorder = EventRecorder(os.path.join(tracer.config.trace_dir, name))
        self.emit = self.recorder.emit
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def start_flusher(self) -> None:
        if self._flusher is not None:
            return
        self._stop.clear()
        self._flusher = threading.Thread(target=self._loop, name="lockprobe-flush", daemon=True)
        self._flusher.start()

    def stop_flusher(self) -> bool:
        """Stop the flusher (before fork, at exit); returns whether it was running."""
        flusher, self._flusher = self._flusher, None
        if flusher is None:
            return False
        self._stop.set()
        if flusher is not threading.current_thread():
            flusher.join()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        # The trace directory may be gone (lockprobe killed): the program goes on.
        with contextlib.suppress(OSError, ValueError):
            self.recorder.flush()


class Tracer:
    """Patches sqlite3.connect in this interpreter and records what every connection does."""

    def __init__(self, config: TraceConfig) -> None:
        self.config = config
        self._recording: _Recording | None = None
        self._recording_lock = threading.Lock()
        self._conn_numbers = itertools.count(1)
        self._workers: dict[tuple[int, str, str | None], str] = {}
        self._process_label: str | None = None
        self._places: dict[str, str | None] = {}
        self._connection_classes: dict[type, type] = {}
        self._cursor_classes: dict[type, type] = {}
        self._original_connect: Callable[..., Any] | None = None
        self._sqlite3: Any = None
        self._capi_ready = False
        self._capi_loader = 0  # thread ident loading the C API: its connects are not traced
        self._exit_hooked = False
        self._first_db: str | None = None
        self.cwd = _getcwd()
        self.stdlib = os.path.dirname(os.__file__) + os.sep
        self.own_dirs = (os.path.dirname(os.path.abspath(__file__)) + os.sep,)

    # ------------------------------------------------------------------ install / uninstall

    def install(self, sqlite3_module: Any) -> None:
        """Patch `sqlite3.connect` and `sqlite3.dbapi2.connect` (the same C function; Django and
        SQLAlchemy call it through dbapi2, aiosqlite through sqlite3)."""
        if self._original_connect is not None:
            return
        dbapi2 = sys.modules.get("sqlite3.dbapi2", sqlite3_module)
        self._sqlite3 = dbapi2
        self._original_connect = dbapi2.connect
        self.own_dirs = (*self.own_dirs, os.path.dirname(dbapi2.__file__) + os.sep)
        connect = self._make_connect(dbapi2.connect)
        for module in {id(m): m for m in (sqlite3_module, dbapi2)}.values():
            module.connect = connect
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )

    def uninstall(self) -> None:
        """Restore sqlite3.connect (connections already made stay instrumented)."""
        if self._original_connect is None:
            return
        for name in ("sqlite3", "sqlite3.dbapi2"):
            module = sys.modules.get(name)
            if module is not None:
                module.connect = self._original_connect
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
        database = args[0] if args else kwargs.get("database")
        uri = args[7] if len(args) > 7 else kwargs.get("uri", False)
        if database is None:
            return args, kwargs
        if self.config.db is not None and database_path(database, bool(uri)) != self.config.db:
            return args, kwargs
        if not self._capi_ready:
            self._load_capi()
        if len(args) > 5:
            base = args[5]
            args = (*args[:5], self.connection_class(base), *args[6:])
        else:
            base = kwargs.get("factory", self._sqlite3.Connection)
            kwargs = {**kwargs, "factory": self.connection_class(base)}
        return args, kwargs

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
    def recording(self) -> _Recording:
        recording = self._recording
        if recording is None:
            with self._recording_lock:
                if self._recording is None:
                    self._recording = self._start_recording()
                recording = self._recording
        return recording

    def emit(self, record: tuple[Any, ...]) -> None:
        """Record one event; never raises (it also runs inside SQLite's busy handler)."""
        try:  # noqa: SIM105 - the hot path: a try costs nothing there, suppress() does
            self.recording.emit(record)
        except Exception:
            pass

    def _start_recording(self) -> _Recording:
        recording = _Recording(self)
        db = self.config.db or self._first_db
        journal_mode, page_size = read_header(db)
        recording.emit(
            (
                "meta",
                time.monotonic_ns(),
                os.getpid(),
                f"trace {self.config.command}".rstrip(),
                db,
                journal_mode if self.config.db else None,
                page_size,
                None,
                platform.python_version(),
                self._sqlite3.sqlite_version if self._sqlite3 else None,
                sys.platform,
            )
        )
        if not self._exit_hooked:
            self._exit_hooked = True
            atexit.register(self.flush_at_exit)
            _wrap_os_exits(self)
        recording.start_flusher()
        return recording

    def flush(self) -> None:
        if self._recording is not None:
            self._recording.flush()

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
        self._recording = None
        self._recording_lock = threading.Lock()
        self._workers = {}
        self._process_label = None

    # ------------------------------------------------------------------ connections

    def connection_class(self, base: type) -> type:
        """The instrumented subclass of a connection class (cached per class)."""
        cls = self._connection_classes.get(base)
        if cls is None:
            cls = self._connection_classes[base] = _make_connection_class(self, base)
        return cls

    def cursor_class(self, base: type) -> type:
        cls = self._cursor_classes.get(base)
        if cls is None:
            cls = self._cursor_classes[base] = _make_cursor_class(self, base)
        return cls

    def on_open(self, conn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Instrument a new connection and record its `open` event."""
        database = args[0] if args else kwargs.get("database")
        uri = args[7] if len(args) > 7 else kwargs.get("uri", False)
        timeout = args[1] if len(args) > 1 else kwargs.get("timeout", 5.0)
        path = database_path(database, bool(uri))
        if self._first_db is None and path is not None:
            self._first_db = path
        conn_id = f"c{os.getpid()}.{next(self._conn_numbers)}"
        timeout_ms = max(0, int(float(timeout) * 1000))
        probe = ConnectionProbe(conn, conn_id, self.emit, timeout_ms=timeout_ms)
        state = _Connection(conn_id, probe, path)
        journal_mode, _ = read_header(path)
        worker, _, _ = self._identity()
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
            )
        )
        conn._lockprobe = state

    def on_close(self, state: _Connection) -> None:
        self.emit(("close", time.monotonic_ns(), state.conn_id))

    def call(
        self,
        state: _Connection,
        target: Any,
        conn: Any,
        op: str,
        sql: Any,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one call into sqlite3 exactly as asked and record it. The result and any
        exception are the original objects: the exception is re-raised unchanged."""
        previous = state.active
        state.active = threading.get_ident()
        probe = state.probe
        busy_before = probe.busy_calls
        t0 = time.monotonic_ns()
        try:
            result = method(target, *args, **kwargs)
        except BaseException as exc:
            t1 = time.monotonic_ns()
            state.active = previous
            self._record(state, conn, op, sql, t0, t1, busy_before, exc)
            if probe.interrupted is not None:
                raise probe.take_interrupt()  # type: ignore[misc]  # noqa: B904 - as untraced: context
            raise
        t1 = time.monotonic_ns()
        state.active = previous
        self._record(state, conn, op, sql, t0, t1, busy_before, None)
        if probe.interrupted is not None:
            raise probe.take_interrupt()  # type: ignore[misc]
        return result

    def _record(
        self,
        state: _Connection,
        conn: Any,
        op: str,
        sql: Any,
        t0: int,
        t1: int,
        busy_before: int,
        exc: BaseException | None,
    ) -> None:
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
            stmts = probe.take_statements()
            text = sql if type(sql) is str else repr(sql)
            if len(text) > SQL_LIMIT:
                text = text[:SQL_LIMIT] + "..."
            worker, thread, task = self._identity()
            self.emit(
                (
                    "call",
                    t0,
                    t1,
                    state.conn_id,
                    worker,
                    thread,
                    task,
                    op,
                    text,
                    stmts,
                    probe.busy_calls - busy_before,
                    err,
                    ext,
                    msg,
                    in_txn,
                    self._call_site(),
                )
            )
            if exc is None and ("journal_mode" in text or "JOURNAL_MODE" in text):
                self._follow_journal_mode(state)
        except Exception:  # a recording problem must never surface in the program
            pass

    def _follow_journal_mode(self, state: _Connection) -> None:
        """After `PRAGMA journal_mode=...`, record the database's mode from its header."""
        journal_mode, page_size = read_header(state.path)
        if journal_mode is None:
            return
        self.emit(
            (
                "meta",
                time.monotonic_ns(),
                os.getpid(),
                f"trace {self.config.command}".rstrip(),
                state.path,
                journal_mode,
                page_size,
                None,
                platform.python_version(),
                self._sqlite3.sqlite_version,
                sys.platform,
            )
        )

    # --------------------------------------------------------------------- identity

    def _identity(self) -> tuple[str, int, str | None]:
        """(worker label, native thread id, asyncio task name) of the calling code."""
        thread = threading.get_native_id()
        task = None
        aio = sys.modules.get("asyncio")
        if aio is not None:
            loop = aio._get_running_loop()
            if loop is not None:
                current = aio.current_task(loop)
                if current is not None:
                    task = current.get_name()
        key = (thread, threading.current_thread().name, task)
        worker = self._workers.get(key)
        if worker is None:
            worker = self._new_worker(key)
        return worker, thread, task

    def _new_worker(self, key: tuple[int, str, str | None]) -> str:
        thread, thread_name, task = key
        label = task or thread_name
        prefix = self._process()
        worker = f"{prefix}/{label}" if prefix else label
        if len(self._workers) >= _WORKER_CACHE_LIMIT:
            self._workers.clear()
        self._workers[key] = worker
        group = re.sub(r"[-_#]?\d+", "", worker) or worker
        kind = "coroutine" if task else "thread"
        self.emit(("worker", time.monotonic_ns(), worker, group, kind, os.getpid(), thread, task))
        return worker

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

    def _call_site(self) -> str | None:
        """'file:line function' of the first frame in the application's own code; the first
        library frame when the call has none (a driver's own thread)."""
        frame = sys._getframe(2)
        places = self._places
        fallback = None
        while frame is not None:
            filename = frame.f_code.co_filename
            place = places.get(filename, "")
            if place == "":
                place = places[filename] = self._classify(filename)
            if place is not None and place is not _SKIP:
                if place[0] == "u":
                    return f"{place[1:]}:{frame.f_lineno} {frame.f_code.co_name}"
                if fallback is None:
                    fallback = f"{place[1:]}:{frame.f_lineno} {frame.f_code.co_name}"
            frame = frame.f_back
        return fallback

    def _classify(self, filename: str) -> str | None:
        """'u' + short path for application code, 'l' + short path for libraries, _SKIP for
        sqlite3 and lockprobe."""
        if filename.startswith(self.own_dirs):
            return _SKIP
        path = filename.replace(os.sep, "/")
        in_site = any(part in path for part in _SITE_DIRS)
        library = (
            any(part in path for part in LIBRARY_PARTS)
            or (filename.startswith(self.stdlib) and not in_site)
            or filename.startswith("<frozen ")
        )
        short = filename
        if in_site:
            for part in _SITE_DIRS:
                if part in path:
                    short = path.split(part, 1)[1]
                    break
        elif self.cwd and filename.startswith(self.cwd):
            short = filename[len(self.cwd) :]
        return ("l" if library else "u") + short


def _getcwd() -> str:
    try:
        return os.getcwd() + os.sep
    except OSError:
        return ""


def _wrap_os_exits(tracer: Tracer) -> None:
    """Flush before os._exit (multiprocessing's forked children end that way, skipping atexit)
    and before exec* (the new program replaces this one and its unwritten events)."""

    def wrap(name: str) -> None:
        original = getattr(os, name, None)
        if original is None or getattr(original, "__lockprobe__", False):
            return

        def flushed(*args: Any, **kwargs: Any) -> Any:
            tracer.flush_at_exit()
            return original(*args, **kwargs)

        flushed.__lockprobe__ = True  # type: ignore[attr-defined]
        flushed.__wrapped__ = original  # type: ignore[attr-defined]
        flushed.__name__ = name
        flushed.__doc__ = original.__doc__
        setattr(os, name, flushed)

    for name in ("_exit", "execv", "execve"):
        wrap(name)


def _make_connection_class(tracer: Tracer, base: type) -> type:
    """A subclass of `base` (sqlite3.Connection or the program's own factory) whose calls are
    recorded. It keeps the base's name, so messages and reprs read the same."""
    base_init = base.__init__
    base_execute = base.execute
    base_executemany = base.executemany
    base_executescript = base.executescript
    base_commit = base.commit
    base_rollback = base.rollback
    base_cursor = base.cursor
    base_close = base.close
    base_exit = base.__exit__
    base_set_trace = base.set_trace_callback
    cursor_base = tracer._sqlite3.Cursor
    get_ident = threading.get_ident
    call = tracer.call
    no_factory = object()

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._lockprobe = None
        base_init(self, *args, **kwargs)
        try:
            tracer.on_open(self, args, kwargs)
        except Exception:
            self._lockprobe = None  # not instrumented; the connection works as usual

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or state.active == get_ident():
            return base_execute(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql")
        return call(state, self, self, "execute", sql, base_execute, args, kwargs)

    def executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or state.active == get_ident():
            return base_executemany(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql")
        return call(state, self, self, "executemany", sql, base_executemany, args, kwargs)

    def executescript(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or state.active == get_ident():
            return base_executescript(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql_script")
        return call(state, self, self, "executescript", sql, base_executescript, args, kwargs)

    def commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or state.active == get_ident():
            return base_commit(self, *args, **kwargs)
        return call(state, self, self, "commit", "COMMIT", base_commit, args, kwargs)

    def rollback(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or state.active == get_ident():
            return base_rollback(self, *args, **kwargs)
        return call(state, self, self, "rollback", "ROLLBACK", base_rollback, args, kwargs)

    def __exit__(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or state.active == get_ident() or len(args) != 3:
            return base_exit(self, *args, **kwargs)
        op = "commit" if args[0] is None else "rollback"
        return call(state, self, self, op, op.upper(), base_exit, args, kwargs)

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._lockprobe is None or len(args) + len(kwargs) > 1:
            return base_cursor(self, *args, **kwargs)
        factory = args[0] if args else kwargs.get("factory", no_factory)
        if factory is no_factory:
            factory = cursor_base
        elif not (isinstance(factory, type) and issubclass(factory, cursor_base)):
            return base_cursor(self, *args, **kwargs)  # a factory function: left as it is
        return base_cursor(self, tracer.cursor_class(factory))

    def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        result = base_close(self, *args, **kwargs)
        if state is not None:
            self._lockprobe = None
            tracer.on_close(state)
        return result

    def set_trace_callback(self: Any, *args: Any, **kwargs: Any) -> Any:
        """The program's own trace callback runs after the probe's (which only appends)."""
        state = self._lockprobe
        callback = args[0] if len(args) == 1 and not kwargs else kwargs.get("trace_callback")
        if state is None or len(args) + len(kwargs) != 1:
            return base_set_trace(self, *args, **kwargs)
        append = state.probe.statements.append
        if callback is None:
            return base_set_trace(self, append)
        if not callable(callback):
            return base_set_trace(self, *args, **kwargs)

        def both(statement: str) -> Any:
            append(statement)
            return callback(statement)

        return base_set_trace(self, both)

    namespace = {
        "__slots__": ("_lockprobe",),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "__init__": __init__,
        "execute": execute,
        "executemany": executemany,
        "executescript": executescript,
        "commit": commit,
        "rollback": rollback,
        "__exit__": __exit__,
        "cursor": cursor,
        "close": close,
        "set_trace_callback": set_trace_callback,
    }
    return type(base.__name__, (base,), namespace)


def _make_cursor_class(tracer: Tracer, base: type) -> type:
    """A subclass of a cursor class (sqlite3.Cursor, or Django's SQLiteCursorWrapper) whose
    execute calls are recorded on its connection."""
    base_execute = base.execute
    base_executemany = base.executemany
    base_executescript = base.executescript
    get_ident = threading.get_ident
    call = tracer.call

    def _state(cursor: Any) -> Any:
        try:
            state = cursor.connection._lockprobe
        except AttributeError:
            return None
        if state is None or state.active == get_ident():
            return None
        return state

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = _state(self)
        if state is None:
            return base_execute(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql")
        return call(state, self, self.connection, "execute", sql, base_execute, args, kwargs)

    def executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = _state(self)
        if state is None:
            return base_executemany(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql")
        return call(
            state, self, self.connection, "executemany", sql, base_executemany, args, kwargs
        )

    def executescript(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = _state(self)
        if state is None:
            return base_executescript(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql_script")
        return call(
            state, self, self.connection, "executescript", sql, base_executescript, args, kwargs
        )

    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "execute": execute,
        "executemany": executemany,
        "executescript": executescript,
    }
    return type(base.__name__, (base,), namespace)


_tracer: Tracer | None = None


def install_from_environment() -> Tracer | None:
    """Called by the injected sitecustomize: trace this interpreter if LOCKPROBE_TRACE_DIR is
    set. sqlite3 is patched when it is first imported, so programs that never use it pay for
    nothing but this module's import."""
    global _tracer
    config = TraceConfig.from_environment()
    if config is None or _tracer is not None:
        return _tracer
    _tracer = Tracer(config)
    if "sqlite3.dbapi2" in sys.modules:
        _tracer.install(sys.modules.get("sqlite3", sys.modules["sqlite3.dbapi2"]))
    else:
        sys.meta_path.insert(0, _Sqlite3ImportHook(_tracer))
    return _tracer


class _Sqlite3ImportHook:
    """A meta path finder that lets `sqlite3.dbapi2` import normally, then patches it before
    `sqlite3/__init__.py` copies its names (`from sqlite3.dbapi2 import *`)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "sqlite3.dbapi2":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        loader = spec.loader
        original_exec = loader.exec_module
        tracer = self.tracer

        def exec_module(module: Any) -> None:
            original_exec(module)
            try:
                tracer.install(module)
            except Exception:
                pass
            finally:
                loader.exec_module = original_exec  # type: ignore[method-assign]
                _remove_hook(tracer)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _remove_hook(tracer: Tracer) -> None:
    sys.meta_path[:] = [
        f for f in sys.meta_path if not (isinstance(f, _Sqlite3ImportHook) and f.tracer is tracer)
    ]
