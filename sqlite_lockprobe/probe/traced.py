"""The instrumented classes a traced program gets: a subclass of the connection class it asked
for (its own `factory=` included) and of every cursor class it uses (Django's cursor wrapper
included), whose calls go through `Tracer.call`. They keep their base's name and module, so
messages and reprs read the same. Standard library only (it runs in the traced program).

The wrappers are on the program's hot path. Where the base method is sqlite3's own C method
(positional arguments only), the wrapper takes the same fixed positional arguments: a
`*args, **kwargs` signature cost about 1,400 instructions a call (../shared/TRACE-COST.md).
Calls of any other shape go through a closure, as they come.

Where `sqlite_lockprobe.probe._speedups` is built for this interpreter (and LOCKPROBE_PURE_PYTHON is
not 1), the fixed wrappers and commit/rollback are its compiled twin, `RecordedMethod`: it
makes the common call and its short record in C and hands every other call to the Python
wrapper it replaces, so both record the same events (docs/trace.md, "The compiled fast path").
"""

from __future__ import annotations

import threading
import time
import types
from typing import TYPE_CHECKING, Any

from sqlite_lockprobe.events.eventfile import TRACE_OPS
from sqlite_lockprobe.probe.capi import compiled_speedups

if TYPE_CHECKING:
    from sqlite_lockprobe.probe.tracer import Tracer

# The calls recorded, by number: a trace record's key carries it in its low bits.
OP_EXECUTE, OP_EXECUTEMANY, OP_EXECUTESCRIPT, OP_COMMIT, OP_ROLLBACK = range(len(TRACE_OPS))
NO_ARG: Any = object()  # an argument the call did not pass
# SQL texts already classified by the tracer (tracer.sql_bits): 0 for plain SQL, which the
# wrappers record themselves. Filled by the tracer.
SQL_BITS: dict[str, int] = {}
_special_get = SQL_BITS.get
get_ident = threading.get_ident
monotonic_ns = time.monotonic_ns
_C_METHOD = (types.MethodDescriptorType, types.BuiltinFunctionType, types.WrapperDescriptorType)
RecordedMethod = getattr(compiled_speedups(), "RecordedMethod", None)
CursorMethod = getattr(compiled_speedups(), "CursorMethod", None)
# Which wrappers record the calls in this process: the trace's `meta` event says so.
PROBE_PATH = "python" if RecordedMethod is None else "compiled"


def _sql_method(tracer: Tracer, base: Any, op: int, on_connection: bool) -> Any:
    """The wrapper of execute, executemany or executescript: recorded on the connection (the
    cursor's own connection for a cursor method), run exactly as asked."""
    call = tracer.call

    def flexible(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self if on_connection else _connection_of(self)
        state = conn._lockprobe
        if state is None:
            return base(self, *args, **kwargs)
        sql = args[0] if args else kwargs.get("sql", kwargs.get("sql_script"))
        if not kwargs and 1 <= len(args) <= 2:
            return call(state, self, conn, base, op, sql, *args)
        return call(state, self, conn, _bound(base, args, kwargs), op, sql)

    if not isinstance(base, _C_METHOD):
        # A Python base (Django's cursor wrapper): compiled, the common call is made and
        # recorded in C like a C base's; in Python, every call goes through `call`.
        return _compiled(tracer, flexible, flexible, base, op, None, on_connection)

    record, failed = tracer.record, tracer.failed

    def fixed(self: Any, sql: Any, parameters: Any = NO_ARG, /) -> Any:
        conn = self if on_connection else _connection_of(self)
        state = conn._lockprobe
        if state is None:
            if parameters is NO_ARG:
                return base(self, sql)
            return base(self, sql, parameters)
        try:
            plain = _special_get(sql) == 0
        except TypeError:  # not hashable: sqlite3 refuses it, as untraced
            plain = False
        if not plain or state.active:
            return call(state, self, conn, base, op, sql, sql, parameters)
        # The common call, made here rather than through `call`: a Python call level less.
        ident = state.active = get_ident()
        t0 = monotonic_ns()
        try:
            result = base(self, sql) if parameters is NO_ARG else base(self, sql, parameters)
        except BaseException as exc:
            state.active = 0
            interrupt = failed(state, conn, op, sql, t0, exc)
            if interrupt is not None:
                raise interrupt  # noqa: B904 - chained to the SQLite error, as untraced
            raise
        t1 = monotonic_ns()
        state.active = 0
        record(state, conn, op, sql, t0, t1, ident)
        return result

    # Compiled, calls of other shapes go through `flexible` (sqlite3 refuses them itself).
    return _compiled(tracer, fixed, flexible, base, op, None, on_connection)


def _ending_method(tracer: Tracer, base: Any, op: int, sql: str) -> Any:
    """The wrapper of commit or rollback."""
    call, record, failed = tracer.call, tracer.record, tracer.failed

    def ending(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None:
            return base(self, *args, **kwargs)
        if args or kwargs:
            return call(state, self, self, _bound(base, args, kwargs), op, sql)
        if state.active:
            return call(state, self, self, base, op, sql)
        ident = state.active = get_ident()
        t0 = monotonic_ns()
        try:
            result = base(self)
        except BaseException as exc:
            state.active = 0
            interrupt = failed(state, self, op, sql, t0, exc)
            if interrupt is not None:
                raise interrupt  # noqa: B904 - chained to the SQLite error, as untraced
            raise
        t1 = monotonic_ns()
        state.active = 0
        record(state, self, op, sql, t0, t1, ident)
        return result

    return _compiled(tracer, ending, ending, base, op, sql, True)


def _compiled(
    tracer: Tracer, twin: Any, odd: Any, base: Any, op: int, sql: str | None, on_connection: bool
) -> Any:
    """The compiled twin of the Python wrapper `twin` where it is built, else `twin`. `odd`
    takes the calls of a shape the compiled one does not make (keywords, other counts)."""
    if RecordedMethod is None:
        return twin
    from sqlite_lockprobe.probe.callsite import USER
    from sqlite_lockprobe.probe.tracer import LONG_CALL_NS, StatementBudget  # loaded by now

    sites = tracer.call_sites
    return RecordedMethod(
        twin,
        odd,
        tracer,
        base,
        op,
        sql,
        on_connection,
        SQL_BITS,
        _from_compiled,
        LONG_CALL_NS,
        StatementBudget.LIMIT,
        # CallSites' caches, which the compiled method reads (and only CallSites fills).
        getattr(sites, "_places", None),
        getattr(sites, "_sites", None),
        USER,
    )


def _compiled_cursor(
    twin: Any, base_cursor: Any, cursor_classes: dict[type, type], default_cursor: type
) -> Any:
    """The connection's `cursor`: compiled where built (CursorMethod makes cursor() and
    cursor(factory=Known) in C, and hands every other call to `twin`), else `twin`."""
    if CursorMethod is None:
        return twin
    return CursorMethod(twin, base_cursor, cursor_classes, default_cursor)


def _from_compiled(method: Any, *args: Any) -> Any:
    """`method(*args)`, called by the compiled wrapper for a failed call (Tracer.failed) or
    one recorded in full (Tracer.record): this frame stands where the Python wrapper's would,
    and the call site is looked for a fixed number of frames up (tracer._FULL_RECORD_DEPTH)."""
    return method(*args)


def _bound(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`method` with the arguments of a call of an unusual shape, as a one-argument callable."""
    return lambda target: method(target, *args, **kwargs)


class _NoConnection:
    _lockprobe = None


_NO_CONNECTION = _NoConnection()


def _connection_of(cursor: Any) -> Any:
    try:
        return cursor.connection
    except AttributeError:
        return _NO_CONNECTION


def connection_subclass(tracer: Tracer, base: type[Any]) -> type:
    """A subclass of `base` (sqlite3.Connection or the program's own factory) whose calls are
    recorded. It keeps the base's name, so messages and reprs read the same."""
    base_init = base.__init__
    base_commit = base.commit
    base_rollback = base.rollback
    base_cursor = base.cursor
    base_close = base.close
    base_exit = base.__exit__
    base_set_trace = base.set_trace_callback
    base_set_progress = base.set_progress_handler
    cursor_base = tracer._sqlite3.Cursor
    cursor_classes = tracer._cursor_classes  # instrumented cursor class per factory class
    call = tracer.call
    default_cursor = tracer.cursor_class(cursor_base)  # what cursor() with no factory makes

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._lockprobe = None
        base_init(self, *args, **kwargs)
        try:
            tracer.on_open(self, args, kwargs)
        except Exception:
            self._lockprobe = None  # not instrumented; the connection works as usual

    def __exit__(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self._lockprobe
        if state is None or len(args) != 3:
            return base_exit(self, *args, **kwargs)
        op, sql = (OP_COMMIT, "COMMIT") if args[0] is None else (OP_ROLLBACK, "ROLLBACK")
        return call(state, self, self, _bound(base_exit, args, kwargs), op, sql, NO_ARG, NO_ARG)

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            # The common call: Python 3.10's Connection.execute makes one per call.
            if self._lockprobe is None:
                return base_cursor(self)
            return base_cursor(self, default_cursor)
        if self._lockprobe is None or len(args) + len(kwargs) > 1 or kwargs.keys() - {"factory"}:
            return base_cursor(self, *args, **kwargs)  # sqlite3 decides (and refuses)
        factory = args[0] if args else kwargs["factory"]
        try:
            known = cursor_classes.get(factory)
        except TypeError:  # not hashable: not a class
            known = None
        if known is not None:  # a factory class seen before (Django's, on every query)
            return base_cursor(self, known)
        if not (isinstance(factory, type) and issubclass(factory, cursor_base)):
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
        """The program's own trace callback runs after the probe's (which only appends).
        SQLite keeps one trace hook per connection: while the program has one, sqlite3's
        hook calls both; the compiled hook (probe.py) is registered again when it is unset."""
        state = self._lockprobe
        callback = args[0] if len(args) == 1 and not kwargs else kwargs.get("trace_callback")
        if state is None or len(args) + len(kwargs) != 1:
            return base_set_trace(self, *args, **kwargs)
        statements = state.statements
        append = statements.append
        compiled = hasattr(statements, "detach")
        if callback is None:
            if compiled:
                base_set_trace(self, None)
                return None if statements.install() else base_set_trace(self, append)
            return base_set_trace(self, append)
        if not callable(callback):
            return base_set_trace(self, *args, **kwargs)

        def both(statement: str) -> Any:
            append(statement)
            return callback(statement)

        result = base_set_trace(self, both)
        if compiled:
            statements.detach()  # replaced by sqlite3's hook, which appends through `both`
        return result

    def set_progress_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        """The program's own progress handler runs on its own schedule, and also keeps the
        probe's statement budget (tracer.StatementBudget); None gives the probe's back."""
        state = self._lockprobe
        if state is None or kwargs or len(args) != 2:
            return base_set_progress(self, *args, **kwargs)
        handler, n = args
        if handler is None:
            return tracer.keep_statement_budget(self, state)
        if not callable(handler):
            return base_set_progress(self, *args)
        fold = state.fold_statements

        def both() -> Any:
            fold()
            return handler()

        return base_set_progress(self, both, n)

    namespace = {
        # Weakly referable (the probe refers back to its connection so): a connection its
        # program drops is freed at once, as untraced.
        "__slots__": ("_lockprobe",) + (() if base.__weakrefoffset__ else ("__weakref__",)),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "__init__": __init__,
        "execute": _sql_method(tracer, base.execute, OP_EXECUTE, True),
        "executemany": _sql_method(tracer, base.executemany, OP_EXECUTEMANY, True),
        "executescript": _sql_method(tracer, base.executescript, OP_EXECUTESCRIPT, True),
        "commit": _ending_method(tracer, base_commit, OP_COMMIT, "COMMIT"),
        "rollback": _ending_method(tracer, base_rollback, OP_ROLLBACK, "ROLLBACK"),
        "__exit__": __exit__,
        "cursor": _compiled_cursor(cursor, base_cursor, cursor_classes, default_cursor),
        "close": close,
        "set_trace_callback": set_trace_callback,
        "set_progress_handler": set_progress_handler,
    }
    return type(base.__name__, (base,), namespace)


def cursor_subclass(tracer: Tracer, base: type[Any]) -> type:
    """A subclass of a cursor class (sqlite3.Cursor, or Django's SQLiteCursorWrapper) whose
    execute calls are recorded on its connection."""
    namespace = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "execute": _sql_method(tracer, base.execute, OP_EXECUTE, False),
        "executemany": _sql_method(tracer, base.executemany, OP_EXECUTEMANY, False),
        "executescript": _sql_method(tracer, base.executescript, OP_EXECUTESCRIPT, False),
    }
    return type(base.__name__, (base,), namespace)
