"""The recorder's sampling mode (`record(sample=0.1)`): every connection gets the probe's busy
handler (waits and give-ups are rare, cost nothing until a wait, and are what production
needs), only every Nth connection opened also gets trace's per-call recording (most of the
cost). An unsampled connection is a plain subclass of its class with no method wrapped but
`close`: its calls run straight into sqlite3's C code.

What an unsampled connection does not record: its calls and statements, its transactions
(so it is never named as a holder), errors that do not go through the busy handler
(SQLITE_LOCKED from a shared cache, a refused lock upgrade, busy_timeout 0), and a busy
timeout changed by PRAGMA after connect (its give-up is then placed by the old timeout).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.resultcodes import SQLITE_BUSY
from sqlite_lockprobe.events.schema import call_event
from sqlite_lockprobe.probe.capi import ConnectionProbe
from sqlite_lockprobe.probe.tracer import TraceConfig, Tracer


def sample_every(sample: float) -> int:
    """Every how many connections opened one is recorded in full (the first is): the
    nearest whole number to 1/sample. Raises LockprobeError outside (0, 1]."""
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 < sample <= 1:
        raise LockprobeError(f"sample must be a fraction in (0, 1], not {sample!r}")
    return max(1, round(1 / sample))


class SamplingTracer(Tracer):
    """trace's Tracer that instruments one connection in `every` call by call and only
    probes the others (busy handler, `open`/`close` events)."""

    def __init__(self, config: TraceConfig, sink: Any, every: int) -> None:
        super().__init__(config, sink=sink)
        self.every = every
        self._opened = itertools.count()
        self.sampled = 0
        self.unsampled = 0
        self._watched_classes: dict[type, type] = {}

    def _make_connect(self, original: Callable[..., Any]) -> Callable[..., Any]:
        traced = super()._make_connect(original)
        tracer = self

        def connect(*args: Any, **kwargs: Any) -> Any:
            if tracer._capi_loader == threading.get_ident() or not tracer.records(args, kwargs):
                return original(*args, **kwargs)
            if next(tracer._opened) % tracer.every == 0:
                tracer.sampled += 1
                return traced(*args, **kwargs)
            tracer.unsampled += 1
            with contextlib.suppress(Exception):  # never let the probe break a connect
                args, kwargs = tracer._with_watched_factory(args, kwargs)
            conn = original(*args, **kwargs)
            if getattr(conn, "_lockprobe_watched", False):
                with contextlib.suppress(Exception):
                    tracer._watch(conn, args, kwargs)
            return conn

        for name in ("__doc__", "__name__", "__qualname__", "__wrapped__"):
            setattr(connect, name, getattr(traced, name))
        return connect

    def _with_watched_factory(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not self._capi_ready:
            self._load_capi()
        if len(args) > 5:
            return (*args[:5], self._watched_class(args[5]), *args[6:]), kwargs
        base = kwargs.get("factory", self._sqlite3.Connection)
        return args, {**kwargs, "factory": self._watched_class(base)}

    def _watched_class(self, base: type) -> type:
        cls = self._watched_classes.get(base)
        if cls is None:
            cls = self._watched_classes[base] = watched_subclass(self, base)
        return cls

    def _watch(self, conn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Give an unsampled connection the busy handler and record its `open` event."""
        path, conn_id, timeout_ms = self.opening(args, kwargs)
        emit = GiveUpEmit(self, conn, conn_id)
        probe = ConnectionProbe(conn, conn_id, emit, timeout_ms, trace_statements=False)
        emit.probe = weakref.ref(probe)
        self.emit_open(conn, conn_id, timeout_ms, None, probe, path)
        conn._lockprobe_probe = probe  # lives as long as the connection


class GiveUpEmit:
    """An unsampled connection's probe's `emit`: records its events, and when its busy
    handler gives up, the failed call no wrapper sees: a `call` event with SQLITE_BUSY, the
    wait's span, its busy-handler calls and the application's line (found from the busy
    handler's own stack, which is the failing call's); its SQL is not known (empty)."""

    __slots__ = ("_tracer", "_conn", "_conn_id", "probe")

    def __init__(self, tracer: Tracer, conn: Any, conn_id: str) -> None:
        self._tracer = tracer
        self._conn = weakref.ref(conn)  # no cycle: a dropped connection closes at once
        self._conn_id = conn_id
        # Weakly: the probe refers to this object (its emit), and a cycle would leave both
        # to the cyclic collector once the connection is gone.
        self.probe: weakref.ref[ConnectionProbe] | None = None

    def __call__(self, record: tuple[Any, ...]) -> None:
        tracer = self._tracer
        tracer.emit(record)
        if record[0] != "busy" or record[4] > 0:
            return
        try:
            probe = self.probe() if self.probe is not None else None
            start = probe._wait_started_ns if probe is not None else 0
            busy = record[3] + 1
            if probe is not None:
                probe.busy_unclaimed = 0
            try:
                in_txn = bool(self._conn().in_transaction)  # type: ignore[union-attr]
            except Exception:
                in_txn = False
            worker, thread, task, _ = tracer._who()
            site = tracer.call_sites.find_from(sys._getframe(1))
            now = time.monotonic_ns()
            message = "database is locked"
            tracer.emit(
                call_event(
                    t0=start or record[1],
                    t1=now,
                    conn=self._conn_id,
                    worker=worker,
                    thread=thread,
                    task=task,
                    op="execute",
                    sql="",
                    stmts=(),
                    busy=busy,
                    err=SQLITE_BUSY,
                    ext=SQLITE_BUSY,
                    msg=message,
                    in_txn=in_txn,
                    site=site,
                )
            )
        except Exception:  # a recording problem must never surface in the program
            pass


def watched_subclass(tracer: Tracer, base: type) -> type:
    """A subclass of `base` that only records its close: every other method is sqlite3's."""
    close = base.close  # type: ignore[attr-defined]

    def close_and_record(self: Any) -> None:
        probe = self.__dict__.get("_lockprobe_probe")
        if probe is not None:
            with contextlib.suppress(Exception):
                tracer.emit(("close", time.monotonic_ns(), probe.conn_id))
        close(self)

    return type(
        f"Watched{base.__name__}",
        (base,),
        {"_lockprobe_watched": True, "close": close_and_record, "__module__": __name__},
    )
