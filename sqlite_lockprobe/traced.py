"""The instrumented classes a traced program gets: a subclass of the connection class it asked
for (its own `factory=` included) and of every cursor class it uses (Django's cursor wrapper
included), whose calls go through `Tracer.call`. They keep their base's name and module, so
messages and reprs read the same. Standard library only (it runs in the traced program).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_lockprobe.tracer import Tracer


def connection_subclass(tracer: Tracer, base: type[Any]) -> type:
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


def cursor_subclass(tracer: Tracer, base: type[Any]) -> type:
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
