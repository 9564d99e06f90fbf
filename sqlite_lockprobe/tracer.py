"""The probe inside a traced program (`lockprobe trace`): every `sqlite3.connect` returns an
instrumented connection, and every execute/commit/rollback is recorded as a `call` event with
who made it (process, thread, asyncio task) and where (the first frame in the user's code).

Standard library only: this runs inside the user's interpreter, which may lack lockprobe's
dependencies. `_inject/sitecustomize.py` loads it when the program first imports sqlite3 (and
LOCKPROBE_TRACE_DIR is set). Each process writes its own event file into that directory:
length-prefixed `marshal` chunks of the event tuples (converting to JSON costs 10 us per event,
marshal 0.25 us), which `read_trace_file` turns into the usual event dicts.

What the program sees does not change: connections are instances of a subclass of the class it
asked for (its own `factory=` included), results and exceptions are the original objects, and
the probe keeps SQLite's busy_timeout schedule (probe.py).
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import itertools
import marshal
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from sqlite_lockprobe.probe import ConnectionProbe, error_codes, load_capi

ENV_DIR = "LOCKPROBE_TRACE_DIR"
ENV_DB = "LOCKPROBE_TRACE_DB"
ENV_COMMAND = "LOCKPROBE_TRACE_COMMAND"
ENV_PARENT = "LOCKPROBE_TRACE_PARENT"

FLUSH_SECONDS = 0.25
FILE_SUFFIX = ".lpk"
MARSHAL_VERSION = 4  # readable by every Python since 3.4, whichever version wrote it
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
_USER, _LIBRARY, _SKIP = 0, 1, 2  # kinds of frames; _SKIP: sqlite3 and lockprobe itself


class TraceConfig:
    """What the parent `lockprobe trace` asked for, passed down in the environment."""

    def __init__(
        self, trace_dir: str, db: str | None = None, command: str = "", parent_pid: int = 0
    ) -> None:
        self.trace_dir = trace_dir
        self.db = db  # realpath of the one database to record, None for all
        self.command = command
        self.parent_pid = parent_pid

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
    """This process's event file, and the background thread that flushes it.

    Events are appended to a deque (thread-safe, C-level) and written by the flusher every
    FLUSH_SECONDS as one chunk: 8-byte length, then `marshal.dumps(list_of_tuples)`. A
    process killed mid-write leaves at most a torn last chunk, which the reader skips.

    The flusher is a bare `_thread` thread: it is not in `threading.enumerate()` or
    `active_count()`, so the program sees the same threads as untraced."""

    def __init__(self, trace_dir: str) -> None:
        name = f"events-{os.getpid()}-{time.monotonic_ns()}{FILE_SUFFIX}"  # exec keeps the pid
        self.path = os.path.join(trace_dir, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.path, flags, 0o600)
        self.pending: deque[tuple[Any, ...]] = deque()
        self.append = self.pending.append
        self._lock = _thread.allocate_lock()
        self._running: tuple[Any, Any] | None = None  # (stop, stopped) locks of the flusher

    def start_flusher(self) -> None:
        if self._running is not None:
            return
        stop, stopped = _thread.allocate_lock(), _thread.allocate_lock()
        stop.acquire()
        stopped.acquire()
        self._running = (stop, stopped)
        _thread.start_new_thread(self._loop, (stop, stopped))

    def stop_flusher(self) -> bool:
        """Stop the flusher (before fork, at exit); returns whether it was running."""
        running, self._running = self._running, None
        if running is None:
            return False
        stop, stopped = running
        stop.release()
        stopped.acquire()  # it has finished its last flush
        return True

    def _loop(self, stop: Any, stopped: Any) -> None:
        try:
            while not stop.acquire(timeout=FLUSH_SECONDS):
                self.flush()
        finally:
            stopped.release()

    def flush(self) -> None:
        with self._lock:
            pending, batch = self.pending, []
            take, keep = pending.popleft, batch.append
            while pending:
                keep(take())
            if not batch:
                return
            data = marshal.dumps(batch, MARSHAL_VERSION)
            chunk = len(data).to_bytes(8, "little") + data
            # The trace directory may be gone (lockprobe killed): the program goes on.
            with contextlib.suppress(OSError):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.fd, view) :]

    def forget(self) -> None:
        """In a forked child: drop the parent's file and events (the parent writes them)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.pending = deque()


def read_trace_file(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of one process's file, as event dicts; stops at a torn last chunk."""
    from sqlite_lockprobe.events import EVENT_FIELDS, to_dict

    with open(path, "rb") as src:
        data = src.read()
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 8], "little")
        end = offset + 8 + size
        if end > len(data):
            return
        try:
            records = marshal.loads(data[offset + 8 : end])
        except (ValueError, EOFError, TypeError):
            return
        offset = end
        for record in records:
            if isinstance(record, tuple) and record and record[0] in EVENT_FIELDS:
                yield to_dict(record)


class Tracer:
    """Patches sqlite3.connect in this interpreter and records what every connection does."""

    def __init__(self, config: TraceConfig) -> None:
        self.config = config
        self._recording: _Recording | None = None
        self._recording_lock = threading.Lock()
        self._conn_numbers = itertools.count(1)
        # Per thread: me = (worker label, native thread id, serves tasks); behalf = who a
        # driver's thread is running the current call for (aiosqlite).
        self._local = threading.local()
        self._task_workers: dict[tuple[int, str], str] = {}
        self._process_label: str | None = None
        self._places: dict[str, tuple[int, str]] = {}
        # (id(code), instruction offset) -> (code, site): the code object is kept alive so
        # its id is never reused for another; f_lineno is computed once per call site.
        self._sites: dict[tuple[int, int], tuple[Any, str]] = {}
        self._connection_classes: dict[type, type] = {}
        self._cursor_classes: dict[type, type] = {}
        self._original_connect: Callable[..., Any] | None = None
        self._sqlite3: Any = None
        self._capi_ready = False
        self._aiosqlite_bridged = False
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
        if not self._aiosqlite_bridged and "aiosqlite.core" in _modules:
            self.bridge_aiosqlite()
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
        recording = self._recording
        try:  # noqa: SIM105 - the hot path: a try costs nothing there, suppress() does
            (recording or self.recording).append(record)
        except Exception:
            pass

    def _start_recording(self) -> _Recording:
        recording = _Recording(self.config.trace_dir)
        db = self.config.db or self._first_db
        journal_mode, page_size = read_header(db)
        recording.append(self._meta(db, journal_mode if self.config.db else None, page_size))
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
        if self._recording is not None:
            self._recording.forget()
        self._recording = None
        self._recording_lock = threading.Lock()
        self._local = threading.local()
        self._task_workers = {}
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
        self.recording  # noqa: B018 - the process's meta event comes first
        conn_id = f"c{os.getpid()}.{next(self._conn_numbers)}"
        timeout_ms = max(0, int(float(timeout) * 1000))
        probe = ConnectionProbe(conn, conn_id, self.emit, timeout_ms=timeout_ms)
        state = _Connection(conn_id, probe, path)
        journal_mode, _ = read_header(path)
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
        exception are the original objects: the exception is re-raised unchanged.

        The hot path: everything here runs for every statement the program executes."""
        previous = state.active
        state.active = get_ident()
        probe = state.probe
        busy_before = probe.busy_calls
        t0 = monotonic_ns()
        try:
            result = method(target, *args, **kwargs)
        except BaseException as exc:
            t1 = monotonic_ns()
            state.active = previous
            interrupt = probe.take_interrupt()
            # An interrupted wait is recorded as what the program sees: the interruption,
            # not the SQLITE_BUSY that ending the wait early produced.
            self._record_failure(state, conn, op, sql, t0, t1, busy_before, interrupt or exc)
            if interrupt is not None:
                raise interrupt  # noqa: B904 - chained to the SQLite error, as untraced
            raise
        t1 = monotonic_ns()
        state.active = previous
        try:
            if type(sql) is not str or len(sql) > SQL_LIMIT:
                sql = _sql_text(sql)
            if "imeout" in sql or "IMEOUT" in sql:
                stmts = probe.take_statements()  # follows PRAGMA busy_timeout = N
            else:
                statements = probe.statements
                stmts = tuple(statements)
                statements.clear()
            # Who: the thread's part is cached per thread; the task is looked up (C calls).
            local = self._local
            try:
                worker, thread, serves_tasks = local.me
            except AttributeError:
                worker, thread, serves_tasks = local.me = self._new_thread()
            task = site = None
            if serves_tasks:  # a driver's thread (aiosqlite) running a task's call
                behalf = local.behalf
                if behalf is not None:
                    worker, task, site = behalf
            else:
                asyncio = _modules.get("asyncio")
                if asyncio is not None and asyncio._get_running_loop() is not None:
                    worker, thread, task, _ = self._who()
            (self._recording or self.recording).append(
                (
                    "call",
                    t0,
                    t1,
                    state.conn_id,
                    worker,
                    thread,
                    task,
                    op,
                    sql,
                    stmts,
                    probe.busy_calls - busy_before,
                    None,
                    None,
                    None,
                    conn.in_transaction,
                    site or self._site(),
                )
            )
            if "ournal_mode" in sql or "OURNAL_MODE" in sql:
                self._follow_journal_mode(state)
        except Exception:  # noqa: S110 - a recording problem must never surface in the program
            pass
        if probe.interrupted is not None:
            raise probe.take_interrupt()  # type: ignore[misc]  # Ctrl-C during a wait
        return result

    def _record_failure(
        self,
        state: _Connection,
        conn: Any,
        op: str,
        sql: Any,
        t0: int,
        t1: int,
        busy_before: int,
        exc: BaseException,
    ) -> None:
        try:
            probe = state.probe
            err = ext = None
            if isinstance(exc, self._sqlite3.Error):
                msg = str(exc)
                err, ext = probe.error_codes(exc) if probe.instrumented else error_codes(exc)
            else:
                msg = f"{type(exc).__name__}: {exc}"
            try:
                in_txn = bool(conn.in_transaction)
            except Exception:  # closed meanwhile
                in_txn = False
            worker, thread, task, site = self._who()
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
                    _sql_text(sql),
                    probe.take_statements(),
                    probe.busy_calls - busy_before,
                    err,
                    ext,
                    msg,
                    in_txn,
                    site or self._site(),
                )
            )
        except Exception:  # a recording problem must never surface in the program
            pass

    def _meta(
        self, db: str | None, journal_mode: str | None, page_size: int | None
    ) -> tuple[Any, ...]:
        return (
            "meta",
            time.monotonic_ns(),
            os.getpid(),
            f"trace {self.config.command}".rstrip(),
            db,
            journal_mode,
            page_size,
            None,
            "{}.{}.{}".format(*sys.version_info[:3]),
            self._sqlite3.sqlite_version if self._sqlite3 else None,
            sys.platform,
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
            worker, thread, serves_tasks = local.me
        except AttributeError:
            worker, thread, serves_tasks = local.me = self._new_thread()
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
                        label = self._new_worker(thread, name, "coroutine")
                    return label, thread, name, None
        return worker, thread, None, None

    def _new_thread(self) -> tuple[str, int, bool]:
        thread = threading.get_native_id()
        return self._new_worker(thread, threading.current_thread().name, "thread"), thread, False

    def bridge_aiosqlite(self) -> None:
        """aiosqlite runs every call on its own thread: wrap its `Connection._execute` (which
        runs in the caller's task) so the call is recorded with that task's name and the
        application's call site, as if made there. Its thread stays the real one."""
        self._aiosqlite_bridged = True
        core = _modules.get("aiosqlite.core")
        cls = getattr(core, "Connection", None)
        original = getattr(cls, "_execute", None)
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
                    local.me = (me[0], me[1], True)
                local.behalf = behalf
                try:
                    return fn(*a, **k)
                finally:
                    local.behalf = None

            return await original(self, on_behalf, *args, **kwargs)

        _execute.__wrapped__ = original  # type: ignore[attr-defined]
        _execute.__doc__ = original.__doc__
        cls._execute = _execute  # type: ignore[union-attr]

    def _new_worker(self, thread: int, name: str, kind: str) -> str:
        """A worker label (the thread or task name, after the process's name for processes
        the program started) and its `worker` event; the group drops numbering."""
        import re

        prefix = self._process()
        worker = f"{prefix}/{name}" if prefix else name
        if kind == "coroutine":
            if len(self._task_workers) >= _WORKER_CACHE_LIMIT:
                self._task_workers.clear()
            self._task_workers[(thread, name)] = worker
        group = re.sub(r"[-_#]?\d+", "", worker) or worker
        task = name if kind == "coroutine" else None
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

    def _site(self) -> str | None:
        """'file:line function' of the first frame in the application's own code; the first
        library frame when the call has none (a driver's own thread)."""
        frame: Any = _getframe(2)
        places = self._places
        fallback = None
        while frame is not None:
            code = frame.f_code
            place = places.get(code.co_filename)
            if place is None:
                place = places[code.co_filename] = self._classify(code.co_filename)
            kind = place[0]
            if kind == _USER:
                return self._site_of(frame, code, place[1])
            if kind == _LIBRARY and fallback is None:
                fallback = frame
            frame = frame.f_back
        if fallback is None:
            return None
        return self._site_of(fallback, fallback.f_code, places[fallback.f_code.co_filename][1])

    def _site_of(self, frame: Any, code: Any, short: str) -> str:
        key = (id(code), frame.f_lasti)
        known = self._sites.get(key)
        if known is not None:
            return known[1]  # type: ignore[no-any-return]
        site = f"{short}:{frame.f_lineno} {code.co_name}"
        if len(self._sites) >= _WORKER_CACHE_LIMIT * 10:
            self._sites.clear()
        self._sites[key] = (code, site)
        return site

    def _classify(self, filename: str) -> tuple[int, str]:
        """(kind, short path) of a source file: the application's, a library's, or ours."""
        if filename.startswith(self.own_dirs):
            return _SKIP, filename
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
        return (_LIBRARY if library else _USER), short


def _sql_text(sql: Any) -> str:
    text = sql if type(sql) is str else repr(sql)
    return text if len(text) <= SQL_LIMIT else text[:SQL_LIMIT] + "..."


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
