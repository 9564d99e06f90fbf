"""From the event log to the Timeline the detectors read: calls with their actors, busy
waits, and the lock holds of every connection (when it took the write lock, with which
statement, until which COMMIT/ROLLBACK, and how that time was spent)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from operator import attrgetter, eq, itemgetter
from typing import Any

from sqlite_lockprobe.diagnose.activity import ActivityCounter, CallCounts
from sqlite_lockprobe.diagnose.model import (
    END_NOT_RECORDED,
    NS_PER_MS,
    SQLITE_BUSY,
    UNFINISHED_STATEMENT,
    Actor,
    BusyWait,
    Call,
    ConnectionInfo,
    DatabaseFilesystem,
    IdleGap,
    LockHold,
    OpenStatement,
    OsLock,
    OsLockSample,
    Timeline,
    WalSample,
)
from sqlite_lockprobe.diagnose.statements import statement_kind


@dataclass(slots=True)
class _ConnState:
    info: ConnectionInfo
    counts: CallCounts
    interned: _Interner
    track_app_idle: bool = False
    worker: str = ""
    had_read: bool = False
    # The holds open: LockHolds whose end and release `_close_hold` fills in.
    write: LockHold | None = None
    read: LockHold | None = None
    # The last call's end and SQL: where the holds' next idle gap would begin.
    last_end: int = 0
    last_start: int = 0
    # The read hold of a statement left unfinished outside a transaction, while it is still
    # the last thing seen of this connection (`unfinished` events).
    unfinished: LockHold | None = None
    last_sql: str = ""
    implicit_txn: bool = False
    # Python >= 3.12 autocommit=False: seen once its commit/rollback ran a BEGIN after itself.
    autocommit_false: bool = False
    write_holds: list[LockHold] = field(default_factory=list)  # closed ones
    read_holds: list[LockHold] = field(default_factory=list)
    # The holds the last call opened after waiting in the busy handler, and that call's span:
    # its busy events (which follow it in the recording) say when the lock was granted.
    granted: tuple[LockHold, ...] = ()
    granted_span: tuple[int, int] = (0, 0)
    open_cursors: list[tuple[Actor, str, int]] = field(default_factory=list)
    closed_cursors: list[OpenStatement] = field(default_factory=list)
    # The actor of the last call, by its raw fields, while no open or worker event came since.
    actor: Actor | None = None
    who: tuple[Any, ...] = ()
    who_seen: int = -1

    def actor_of(self, event: dict[str, Any]) -> Actor:
        """The actor of a call on this connection: mostly the same as the call before's.
        Asked only where needed (a call kept, a hold opened, a cursor)."""
        try:
            who = _ACTOR_FIELDS(event)
        except KeyError:
            who = tuple(map(event.get, _ACTOR_FIELD_NAMES))
        actor = self.actor
        if actor is None or who != self.who or self.who_seen != self.interned.actors_changed:
            actor = self.actor = self.interned.call_actor(event, self.info)
            self.who = who
            self.who_seen = self.interned.actors_changed
        return actor

    def track_cursor(self, plan: _CallPlan, actor: Actor, t1: int, ok: bool) -> None:
        """open_read leaves a statement unfinished; close_read ends the oldest with its SQL."""
        if plan.op == "open_read" and ok:
            self.open_cursors.append((actor, plan.sql, t1))
        elif plan.op == "close_read":
            for i, (opener, sql, t0) in enumerate(self.open_cursors):
                if sql == plan.sql:
                    del self.open_cursors[i]
                    self.closed_cursors.append(OpenStatement(opener, sql, t0, t1, "cursor closed"))
                    break

    def end_cursors(self, t: int, closed_by: str) -> None:
        for actor, sql, t0 in self.open_cursors:
            self.closed_cursors.append(OpenStatement(actor, sql, t0, max(t, t0), closed_by))
        self.open_cursors.clear()


# Every call is kept (renderers draw them) up to this many; past it, only the calls that
# failed or met a busy lock, so a log of millions of events stays in bounded memory.
KEEP_ALL_CALLS_UP_TO = 100_000


@dataclass(slots=True)
class _Recording:
    """What one pass over the events gathers besides the calls: the connections and their
    holds, the processes, and the samples of WAL, OS locks and filesystems."""

    activity: ActivityCounter
    interned: _Interner = field(default_factory=lambda: _Interner())
    meta: dict[str, Any] = field(default_factory=dict)
    conns: dict[str, _ConnState] = field(default_factory=dict)
    retired: list[_ConnState] = field(default_factory=list)  # earlier openings of an id
    waits: list[BusyWait] = field(default_factory=list)
    wal: list[WalSample] = field(default_factory=list)
    samples: list[OsLockSample] = field(default_factory=list)
    filesystems: dict[str, DatabaseFilesystem] = field(default_factory=dict)
    last_call_t0: dict[str, int] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    # The last moment each process recorded anything but a call (calls: _ConnState.last_end),
    # and the process of each worker: where a process's record stops, its open holds end.
    process_last: dict[int, int] = field(default_factory=dict)
    worker_pids: dict[str, int] = field(default_factory=dict)
    # Every call up to `keep_all_calls_up_to`, then only those that failed or waited.
    calls: list[Call] = field(default_factory=list)
    calls_complete: bool = True
    keep_all_calls_up_to: int = KEEP_ALL_CALLS_UP_TO

    def observe(self, event: dict[str, Any], t_end: int) -> None:
        """Any event but a call: counted, and its process's record goes on until t_end."""
        self.activity.observe(event)
        pid = _event_pid(event, self.conns, self.worker_pids, self.meta)
        if pid and t_end > self.process_last.get(pid, 0):
            self.process_last[pid] = t_end

    def keep_call(
        self,
        event: dict[str, Any],
        state: _ConnState,
        plan: _CallPlan,
        times: tuple[int, int],
        busy: int,
        error: int | None,
    ) -> bool:
        """Build and keep a call (and its busy wait); False once past the calls kept."""
        call = _call(event, state.actor_of(event), plan, times[0], times[1], busy, error)
        self.calls.append(call)
        if self.calls_complete and len(self.calls) > self.keep_all_calls_up_to:
            self.calls_complete = False
            self.calls = [c for c in self.calls if c.error is not None or c.busy_calls]
        if busy > 0 or (error == SQLITE_BUSY and not call.busy_from_own_statements):
            self.waits.append(_busy_wait(call, state, plan))
        return self.calls_complete


def build_timeline(
    events: Iterable[dict[str, Any]],
    keep_all_calls_up_to: int = KEEP_ALL_CALLS_UP_TO,
    activity: ActivityCounter | None = None,
) -> Timeline:
    """Build the timeline in one pass over events in time order (each connection's own events
    must be in order; spans are sorted at the end). Spans are kept, and every call up to
    `keep_all_calls_up_to`; past that only the calls that failed or met a busy lock, so
    memory grows with the problems, not with the log. `activity` counts every event and call
    on the way, for the summary. Calls, nearly every event, are handled inline (the hot path
    of a long log: benchmarks/bench_pipeline.py); every other kind by its `_HANDLERS` entry."""
    rec = _Recording(activity or ActivityCounter(), keep_all_calls_up_to=keep_all_calls_up_to)
    conns, interned, last_call_t0 = rec.conns, rec.interned, rec.last_call_t0
    plans = interned.plans
    unopened = rec.activity.counts_for("")  # calls on a connection opened before recording
    calls_complete, first_call_t0, last_call_t1, last_t, seen = True, None, None, 0, 0
    for seen, event in enumerate(events, 1):  # noqa: B007 (the count is used after)
        kind = event["k"]
        if kind == "call":
            try:
                t0, t1, conn, op, sql, stmts, busy, error, in_txn = _CALL_FIELDS(event)
            except KeyError:  # a log from elsewhere may leave fields out
                t0, t1, conn, op, sql, stmts, busy, error, in_txn = _call_fields(event)
            plan = plans.get((op, sql, tuple(stmts) if stmts else ()))
            if plan is None:  # a call unlike any before
                plan = interned.add_plan(op, sql, stmts)
            if not t1:  # as for any event: no end, then its "t"
                last_t = max(last_t, int(event.get("t") or 0))
            if type(t0) is not int or type(t1) is not int or type(busy) is not int:
                t0, t1, busy = int(t0), int(t1), int(busy or 0)  # as recorded, they are
            if t1 > last_t:
                last_t = t1
            if first_call_t0 is None or t0 < first_call_t0:
                first_call_t0 = t0
            if last_call_t1 is None or t1 > last_call_t1:
                last_call_t1 = t1
            state = conns.get(conn)
            counts = unopened if state is None else state.counts
            counts.calls += 1
            counts.handler_calls += busy
            if error is not None:
                counts.failed(error, event.get("ext") or error)
            elif plan.rolls_back:
                counts.rolled_back()
            if state is None:
                continue
            last_call_t0[state.info.conn] = t0
            # Past keep_all_calls_up_to, a call that neither failed nor waited is never built.
            if error is not None or busy or calls_complete:
                calls_complete = rec.keep_call(event, state, plan, (t0, t1), busy, error)
            failed_code = None if error is None else (event.get("ext") or error)
            _advance(state, plan, event, t0, t1, busy, failed_code, in_txn)
            if plan.tracks_cursor:
                state.track_cursor(plan, state.actor_of(event), t1, error is None)
            continue
        t_end = int(event.get("t1") or event.get("t") or 0)
        if t_end > last_t:
            last_t = t_end
        rec.observe(event, t_end)
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(rec, event)
    rec.activity.finish(seen, first_call_t0, last_call_t1)
    return _finish(rec, last_t)


def _on_open(rec: _Recording, event: dict[str, Any]) -> None:
    info = ConnectionInfo(
        conn=event["conn"],
        group=event.get("group") or "",
        pid=int(event.get("pid") or 0),
        timeout_ms=int(event.get("timeout_ms") or 0),
        isolation=event.get("isolation"),
        journal_mode=(event.get("journal_mode") or "").lower(),
        instrumented=bool(event.get("instrumented")),
    )
    rec.pids.add(info.pid)
    earlier = rec.conns.get(info.conn)
    if earlier is not None:
        # The same id opened again (a later process got the same pid): what the first
        # opening did stays, ended here if nothing ended it.
        t = int(event.get("t") or 0)
        _end_txn(earlier, t, "close")
        earlier.end_cursors(t, "connection closed")
        rec.retired.append(earlier)
    # `run` records every sleep/await/wait step: idle time in a hold that no step
    # explains is then known to be scheduling delay.
    rec.conns[info.conn] = _ConnState(
        info,
        rec.activity.counts_for(info.group),
        rec.interned,
        str(rec.meta.get("source", "")).startswith("run "),
        event.get("worker") or "",
    )
    rec.interned.forget_call_actors()  # they carry the connection's group and pid


def _on_close(rec: _Recording, event: dict[str, Any]) -> None:
    state = rec.conns.get(event["conn"])
    if state is not None:
        _end_txn(state, int(event["t"]), "close")
        state.end_cursors(int(event["t"]), "connection closed")


def _on_worker(rec: _Recording, event: dict[str, Any]) -> None:
    rec.interned.add_worker(event)
    if event.get("pid"):
        rec.pids.add(int(event["pid"]))
        rec.worker_pids[str(event["worker"])] = int(event["pid"])


def _on_worker_end(rec: _Recording, event: dict[str, Any]) -> None:
    """A killed process: the OS dropped its locks, and SQLite rolls its transaction back (hot
    journal, or WAL frames never committed) when the database is next opened."""
    if not str(event.get("error") or "").startswith("killed by"):
        return
    for state in rec.conns.values():
        if state.worker == event["worker"]:
            _end_txn(state, int(event["t"]), "process killed")


def _on_unfinished(rec: _Recording, event: dict[str, Any]) -> None:
    state = rec.conns.get(event.get("conn") or "")
    if state is not None:
        _unfinished(state, event)


def _on_busy(rec: _Recording, event: dict[str, Any]) -> None:
    state = rec.conns.get(event.get("conn") or "")
    if state is not None and state.granted:
        _granted(state, int(event["t"]), float(event.get("delay_ms") or 0))


def _on_holders(rec: _Recording, event: dict[str, Any]) -> None:
    conn = event.get("conn") or ""
    rec.samples.append(
        OsLockSample(
            t=int(event["t"]),
            conn=conn,
            call_t0=rec.last_call_t0.get(conn),
            source=event.get("source") or "unavailable",
            locks=_os_locks(list(event.get("locks") or ())),
            note=event.get("note"),
            db=event.get("db"),
        )
    )


def _on_idle(rec: _Recording, event: dict[str, Any]) -> None:
    state = rec.conns.get(event.get("conn") or "")
    if state is not None:
        for hold in (state.write, state.read):
            if hold is not None:
                _add_app_idle(hold, int(event["t0"]), int(event["t1"]))


def _on_wal(rec: _Recording, event: dict[str, Any]) -> None:
    rec.wal.append(
        WalSample(
            int(event["t"]),
            int(event.get("bytes") or 0),
            event.get("mx_frame"),
            event.get("backfilled"),
        )
    )


def _on_filesystem(rec: _Recording, event: dict[str, Any]) -> None:
    db = str(event.get("db") or "")
    rec.filesystems.setdefault(
        db,
        DatabaseFilesystem(
            db,
            str(event.get("type") or "unknown"),
            event.get("mount_point"),
            event.get("source"),
            event.get("network_reason"),
        ),
    )


def _on_meta(rec: _Recording, event: dict[str, Any]) -> None:
    rec.meta = event
    if event.get("pid"):
        rec.pids.add(int(event["pid"]))


# One handler per event kind but `call` (inline in build_timeline); other kinds are counted
# (ActivityCounter) and otherwise left alone.
_HANDLERS = {
    "open": _on_open,
    "close": _on_close,
    "worker": _on_worker,
    "worker_end": _on_worker_end,
    "unfinished": _on_unfinished,
    "busy": _on_busy,
    "holders": _on_holders,
    "idle": _on_idle,
    "wal": _on_wal,
    "filesystem": _on_filesystem,
    "meta": _on_meta,
}


def _finish(rec: _Recording, last_t: int) -> Timeline:
    """End what is still open where its process's record stops, sort, and build."""
    conns, process_last = rec.conns, rec.process_last
    for state in conns.values():  # calls count too: each connection's last one
        pid = state.info.pid
        process_last[pid] = max(process_last.get(pid, 0), state.last_end)
    for state in conns.values():
        # A process whose record stops before the recording does (killed before its last
        # events were written, or exited with the transaction open): what its holds did after
        # its last event is unknown, so they end there, not at the end of the recording.
        end = process_last[state.info.pid]
        released_by = "end-of-run" if end >= last_t else END_NOT_RECORDED
        _end_txn(state, min(end, last_t), released_by)
        state.end_cursors(min(end, last_t), released_by)
    _sort_spans(rec.calls, _CALL_ORDER)
    _sort_spans(rec.waits, _WAIT_ORDER)
    infos = {c: s.info for c, s in conns.items()}
    states = [*rec.retired, *conns.values()]
    meta = rec.meta
    journal = (meta.get("journal_mode") or _most_common_journal(infos) or "delete").lower()
    return Timeline(
        connections=infos,
        calls=tuple(rec.calls),
        calls_complete=rec.calls_complete,
        waits=tuple(rec.waits),
        write_holds=_in_time_order(s.write_holds for s in states),
        read_holds=_in_time_order(s.read_holds for s in states),
        wal_samples=tuple(rec.wal),
        journal_mode=journal,
        page_size=int(meta.get("page_size") or 4096),
        wal_autocheckpoint=int(meta.get("wal_autocheckpoint") or 1000),
        reduced_detail=any(not i.instrumented for i in infos.values()),
        os_lock_samples=tuple(sorted(rec.samples, key=lambda s: s.t)),
        recorded_pids=frozenset(rec.pids),
        conn_databases=_conn_databases(rec.samples, infos),
        filesystems=tuple(rec.filesystems.values()),
        open_statements=tuple(
            sorted(
                (c for st in states for c in st.closed_cursors),
                key=lambda c: (c.t0, c.holder.conn),
            )
        ),
    )


def _event_pid(
    event: dict[str, Any],
    conns: dict[str, _ConnState],
    worker_pids: dict[str, int],
    meta: dict[str, Any],
) -> int:
    """The process that recorded a non-call event: its own pid field, else its connection's
    or its worker's; the recording's own process for the rest (WAL samples, filesystem)."""
    pid = event.get("pid")
    if pid:
        return int(pid)
    owner = conns.get(event.get("conn") or "")
    if owner is not None:
        return owner.info.pid
    if event["k"] == "worker_end":
        return worker_pids.get(str(event.get("worker")), 0)
    return int(meta.get("pid") or 0)


# Spans are ordered by start, then end, then connection. The keys are C getters: a long log
# has hundreds of thousands of spans.
_HOLD_ORDER = (attrgetter("t0"), attrgetter("t0", "t1", "holder.conn"))
_CALL_ORDER = (attrgetter("t0"), attrgetter("t0", "t1", "actor.conn"))
_WAIT_ORDER = (attrgetter("call.t0"), attrgetter("call.t0", "call.t1", "waiter.conn"))


def _sort_spans(spans: list[Any], order: tuple[attrgetter[Any], attrgetter[Any]]) -> None:
    """Sort in place by start alone (int keys compare several times faster than tuples);
    where two spans start in the same nanosecond, a stable re-sort by the whole key gives
    the same order as sorting by it at once."""
    start, whole = order
    spans.sort(key=start)
    starts = list(map(start, spans))
    if any(map(eq, starts, starts[1:])):
        spans.sort(key=whole)


def _in_time_order(per_connection: Iterable[list[LockHold]]) -> tuple[LockHold, ...]:
    """Every connection's holds in one time order."""
    holds = [h for held in per_connection for h in held]
    _sort_spans(holds, _HOLD_ORDER)
    return tuple(holds)


def _conn_databases(
    samples: list[OsLockSample], infos: dict[str, ConnectionInfo]
) -> dict[str, str]:
    """Which database file each connection used, from its own lock-table readings; where all
    readings are of one file (`run` uses one), every connection gets that file."""
    found = {s.conn: s.db for s in samples if s.db}
    files = set(found.values())
    if len(files) == 1:
        only = files.pop()
        for conn in infos:
            found.setdefault(conn, only)
    return found


def _os_locks(raws: list[dict[str, Any]]) -> tuple[OsLock, ...]:
    """A sample's locks; the probe describes each process on its first lock only."""
    about: dict[Any, dict[str, Any]] = {}
    locks = []
    for raw in raws:
        known = about.setdefault(raw.get("pid"), {})
        for key in ("name", "cmdline", "uid", "user"):
            if raw.get(key) is not None:
                known.setdefault(key, raw[key])
    for raw in raws:
        locks.append(_os_lock({**about.get(raw.get("pid"), {}), **raw}))
    return tuple(locks)


def _os_lock(raw: dict[str, Any]) -> OsLock:
    cmdline = raw.get("cmdline")
    pid = raw.get("pid")
    return OsLock(
        pid=int(pid) if pid is not None else None,
        file=str(raw.get("file") or "db"),
        name=str(raw.get("lock") or "?"),
        kind=str(raw.get("kind") or "read"),
        process_name=raw.get("name"),
        cmdline=tuple(str(a) for a in cmdline) if cmdline else None,
        user=raw.get("user"),
        uid=raw.get("uid"),
    )


def _most_common_journal(infos: dict[str, ConnectionInfo]) -> str | None:
    modes = sorted(i.journal_mode for i in infos.values() if i.journal_mode)
    return max(modes, key=modes.count) if modes else None


_ACTOR_FIELD_NAMES = ("worker", "thread", "task", "site")
_ACTOR_FIELDS = itemgetter(*_ACTOR_FIELD_NAMES)
# A call event's fields in one C call: the recorders write them all, in any order.
_CALL_FIELDS = itemgetter("t0", "t1", "conn", "op", "sql", "stmts", "busy", "err", "in_txn")


def _call_fields(event: dict[str, Any]) -> tuple[Any, ...]:
    """The same fields where some are missing (a call must still have t0, t1 and conn)."""
    return (
        event["t0"],
        event["t1"],
        event["conn"],
        event.get("op"),
        event.get("sql"),
        event.get("stmts"),
        event.get("busy"),
        event.get("err"),
        event.get("in_txn"),
    )


# Distinct (op, SQL, statements) plans kept at once (see _Interner.add_plan).
MAX_PLANS = 50_000


class _Interner:
    """One object per distinct actor, SQL text, statement list and call plan: a long log
    repeats the same few thousand of each millions of times."""

    def __init__(self) -> None:
        self.actors: dict[tuple[Any, ...], Actor] = {}
        self.texts: dict[str, str] = {}
        self.statements: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.plans: dict[tuple[Any, ...], _CallPlan] = {}
        # A call's actor by the raw fields it is made of: only valid until the next open or
        # worker event, which can change a connection's or a worker's group.
        self.call_actors: dict[tuple[Any, ...], Actor] = {}
        self.actors_changed = 0
        self.workers: dict[str, dict[str, Any]] = {}

    def actor(self, key: tuple[Any, ...]) -> Actor:
        actor = self.actors.get(key)
        if actor is None:
            actor = self.actors[key] = Actor(*key)
        return actor

    def text(self, sql: str) -> str:
        return self.texts.setdefault(sql, sql)

    def statement_list(self, stmts: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        if not stmts:
            return ()
        key = tuple(stmts)
        return self.statements.setdefault(key, key)

    def add_plan(self, op: Any, sql: Any, stmts: list[str] | None) -> _CallPlan:
        """The plan of a call by its op, SQL and statements as recorded (any may be missing):
        the builder looks it up itself in `plans` first, as it does once per call.

        Traced statements can carry their parameters expanded (`trace`, or an implicit BEGIN
        before a DML in `run`), each call's text then its own: past MAX_PLANS the caches start
        again, so memory stays bounded whatever the log (the plans are the same when remade)."""
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()  # the same dict object: the builder holds it
            self.statements.clear()
            self.texts.clear()
        plan = self.plans[(op, sql, tuple(stmts) if stmts else ())] = _plan(
            op or "execute", self.text(sql or ""), self.statement_list(stmts)
        )
        return plan

    def call_actor(self, event: dict[str, Any], info: ConnectionInfo) -> Actor:
        raw = (
            info.conn,
            event.get("worker"),
            event.get("thread"),
            event.get("task"),
            event.get("site"),
        )
        actor = self.call_actors.get(raw)
        if actor is None:
            actor = self.call_actors[raw] = self.actor(_actor_key(event, info, self.workers))
        return actor

    def add_worker(self, event: dict[str, Any]) -> None:
        self.workers[event["worker"]] = event
        self.forget_call_actors()  # they carry the worker's group

    def forget_call_actors(self) -> None:
        self.call_actors.clear()
        self.actors_changed += 1


def _actor_key(
    event: dict[str, Any], info: ConnectionInfo, workers: dict[str, dict[str, Any]]
) -> tuple[Any, ...]:
    worker = event.get("worker") or info.conn
    return (
        info.conn,
        worker,
        info.group or (workers.get(worker) or {}).get("group", ""),
        info.pid,
        int(event.get("thread") or 0),
        event.get("task"),
        event.get("site"),
    )


@dataclass(frozen=True)
class _CallPlan:
    """What a call does to its connection's locks, worked out once per distinct (op, SQL,
    statements) so that no statement is classified per call. The write and read holds it
    takes depend only on whether a write hold was already open (see `_plan`)."""

    op: str
    sql: str
    statements: tuple[str, ...]  # as recorded (Call.statements)
    phase: str  # of a busy wait in this call
    write_taken_by: str | None  # takes the write lock, naming this statement
    write_explicit: bool  # by BEGIN IMMEDIATE/EXCLUSIVE, not by a write statement
    read_if_no_write: bool  # opens a read hold when no write hold was open
    read_if_write: bool  # opens a read hold when a write hold was open
    begins_implicitly: bool  # Python's sqlite3 issued BEGIN before this DML
    reads: bool  # reads or writes: the transaction has read
    is_commit: bool
    reopens: str | None  # COMMIT or ROLLBACK then BEGIN in one call (autocommit=False)
    rolls_back: bool  # a rollback, for the summary (by its op or its traced statements)
    released: str  # what ended the transaction, if it succeeded and left none open
    tracks_cursor: bool  # opens or closes a cursor left unfinished


def _plan(op: str, sql: str, statements: tuple[str, ...]) -> _CallPlan:
    ran = statements or _inferred_statements(op, sql)
    kinds = [statement_kind(s) for s in ran]
    writes = [i for i, k in enumerate(kinds) if k in ("begin-write", "write")]
    data = [i for i, k in enumerate(kinds) if k in ("read", "write")]
    first_write = writes[0] if writes else None
    explicit = first_write is not None and kinds[first_write] == "begin-write"
    if "commit" in kinds:
        released = "COMMIT"
    elif "rollback" in kinds:
        released = "ROLLBACK"
    else:
        released = "autocommit"
    return _CallPlan(
        op=op,
        sql=sql,
        statements=statements,
        phase=_phase(op, sql),
        write_taken_by=None if first_write is None else ran[first_write] if explicit else sql,
        write_explicit=explicit,
        # The statement that takes the write lock does not also open the read hold.
        read_if_no_write=any(i != first_write for i in data),
        read_if_write=bool(data),
        begins_implicitly="begin" in kinds and statement_kind(sql) not in ("begin", "begin-write"),
        reads=bool(data),
        is_commit=op == "commit" or "commit" in kinds,
        reopens=("COMMIT" if "commit" in kinds else "ROLLBACK") if _reopened(kinds) else None,
        released=released,
        tracks_cursor=op in ("open_read", "close_read"),
        rolls_back=op == "rollback" or any(statement_kind(s) == "rollback" for s in statements),
    )


def _call(
    event: dict[str, Any],
    actor: Actor,
    plan: _CallPlan,
    t0: int,
    t1: int,
    busy: int,
    error: int | None,
) -> Call:
    # Positional, in field order: keyword arguments to a class cost several times more.
    return Call(
        actor,
        t0,
        t1,
        plan.op,
        plan.sql,
        plan.statements,
        busy,
        error,
        event.get("ext"),
        event.get("msg"),
        bool(event.get("in_txn")),
    )


def _phase(op: str, sql: str) -> str:
    if op in ("begin", "commit", "rollback"):
        return op
    kind = statement_kind(sql)
    if kind in ("begin", "begin-write"):
        return "begin"
    return {"write": "write", "read": "read", "commit": "commit"}.get(kind, "other")


def _busy_wait(call: Call, state: _ConnState, plan: _CallPlan) -> BusyWait:
    return BusyWait(
        waiter=call.actor,
        call=call,
        handler_calls=call.busy_calls,
        failed=call.failed_busy,
        timeout_ms=state.info.timeout_ms,
        had_read=state.had_read,
        phase=plan.phase,
    )


def _advance(
    state: _ConnState,
    plan: _CallPlan,
    event: dict[str, Any],
    t0: int,
    t1: int,
    busy: int,
    failed_code: int | None,
    in_txn_after: Any,  # true when the call left a transaction open
) -> None:
    """Move one connection's lock state past one call (failed_code: None if it succeeded)."""
    ok = failed_code is None
    if state.granted:  # the call before's busy events have all been seen
        state.granted = ()
    write, read = state.write, state.read
    last_end, last_sql, sql = state.last_end, state.last_sql, plan.sql
    if write is not None:
        _add_call(write, t0, t1, sql, busy, last_end, last_sql)
    if read is not None:
        _add_call(read, t0, t1, sql, busy, last_end, last_sql)
    state.last_start, state.last_end, state.last_sql = t0, t1, sql
    if ok:
        if plan.begins_implicitly:
            state.implicit_txn = True
        # A statement that waited got its lock at its last busy-handler retry: until its busy
        # events say when (_granted), at its end, the latest the lock can have been granted.
        acquired_at = t1 if busy else t0
        granted: list[LockHold] = []
        if write is None and plan.write_taken_by is not None:
            implicit = False if plan.write_explicit else state.implicit_txn
            state.write = _open_hold(
                state, event, "write", acquired_at, plan.write_taken_by, implicit
            )
            _add_call(state.write, t0, t1, sql, busy, 0, "")
            granted.append(state.write)
        if read is None and (plan.read_if_no_write if write is None else plan.read_if_write):
            state.read = _open_hold(state, event, "read", acquired_at, sql, state.implicit_txn)
            _add_call(state.read, t0, t1, sql, busy, 0, "")
            granted.append(state.read)
        if busy and granted:
            state.granted, state.granted_span = tuple(granted), (t0, t1)
        if plan.reads:
            state.had_read = True
    elif in_txn_after and plan.is_commit:
        # A failed COMMIT leaves the transaction open: until a ROLLBACK, it keeps its locks.
        for hold in (state.write, state.read):
            if hold is not None and hold.failed_commit_t is None:
                hold.failed_commit_t = t1
                hold.failed_commit_code = failed_code
    if ok and in_txn_after and plan.reopens is not None:
        # Python >= 3.12 with autocommit=False runs BEGIN right after COMMIT/ROLLBACK
        # (Modules/_sqlite/connection.c), so a transaction is always open.
        _end_txn(state, t1, plan.reopens)
        state.implicit_txn = state.autocommit_false = True
    elif not in_txn_after:
        _end_txn(state, t1, plan.released if ok else "error")


def _reopened(kinds: list[str]) -> bool:
    """A COMMIT or ROLLBACK followed by a BEGIN within one call (autocommit=False)."""
    ended = False
    for kind in kinds:
        if kind in ("commit", "rollback"):
            ended = True
        elif kind == "begin" and ended:
            return True
    return False


def _open_hold(
    state: _ConnState, event: dict[str, Any], kind: str, t0: int, taken_by: str, implicit: bool
) -> LockHold:
    """A hold as it opens: the LockHold itself (built once, not copied at the end), whose
    end and release are filled in by `_close_hold`."""
    return LockHold(
        state.actor_of(event),
        kind,
        t0,
        t0,
        taken_by,
        "",
        implicit,
        0,
        None,
        0 if state.track_app_idle else None,  # `run` records the application's own steps
        0,
        state.autocommit_false,
        None,
        None,
    )


def _unfinished(state: _ConnState, event: dict[str, Any]) -> None:
    """A statement of this connection seen unfinished outside a transaction (tracer.py,
    look_at_readers) keeps its read lock: a read hold from the call that ran it (its last call,
    when that ran this SQL) to the last moment it was seen open. Its holder is named by where
    the connection's thread was then: the code that has not finished reading."""
    if state.write is not None or state.read is not None:
        return  # a transaction's hold already covers it
    t, sql = int(event["t"]), str(event.get("sql") or "")
    hold = state.unfinished
    if hold is not None and hold.taken_by == sql and hold.t1 >= state.last_end:
        hold.t1 = t  # still open, and no call on the connection since
        return
    start = state.last_start if state.last_sql == sql and state.last_start else t
    actor = state.actor
    if actor is None:
        actor = state.actor_of(event)
    if event.get("site"):
        actor = replace(actor, call_site=event["site"])
    hold = _open_hold(state, event, "read", start, sql, False)
    hold.holder = actor
    hold.t1 = t
    hold.released_by = UNFINISHED_STATEMENT
    state.unfinished = hold
    state.read_holds.append(hold)


def _granted(state: _ConnState, t: int, delay_ms: float) -> None:
    """A busy-handler call at t that slept delay_ms, during the call that opened
    `state.granted`: the lock was granted at the retry after it, if no later one follows."""
    t0, t1 = state.granted_span
    if not t0 <= t <= t1 or delay_ms <= 0:
        return
    at = min(t1, t + int(delay_ms * NS_PER_MS))
    for hold in state.granted:
        # The opening call's time inside SQLite counted from the hold's start (_add_call).
        hold.in_statements_ns += hold.t0 - at
        hold.t0 = at
        if hold.t1 < at:
            hold.t1 = at


def _add_call(
    hold: LockHold, t0: int, t1: int, sql: str, busy: int, last_end: int, last_sql: str
) -> None:
    """A call during the hold: time inside SQLite, the holder's own busy waits, and the gap
    in the application since the call before (which ended at last_end), if the longest."""
    if last_end and t0 > last_end:
        longest = hold.longest_idle
        if longest is None or t0 - last_end > longest.t1 - longest.t0:
            hold.longest_idle = IdleGap(last_end, t0, last_sql, sql)
    start = t0 if t0 > hold.t0 else hold.t0
    if t1 > start:
        hold.in_statements_ns += t1 - start
    if busy and t0 >= hold.t0:
        hold.own_wait_ns += t1 - t0
        if t1 - t0 > hold.own_wait_longest_ns:
            hold.own_wait_longest_ns, hold.own_wait_sql = t1 - t0, sql


def _add_app_idle(hold: LockHold, t0: int, t1: int) -> None:
    """Time the application itself spent in a recorded step (sleep, await, wait)."""
    overlap = max(0, t1 - max(t0, hold.t0))
    hold.app_idle_ns = (hold.app_idle_ns or 0) + overlap


def _close_hold(hold: LockHold, t1: int, released_by: str, last_end: int, last_sql: str) -> None:
    """The hold ends at t1. Idle since the last call (ended at last_end) until an end that
    was no call (a close, the end of the run) is a gap too."""
    if last_end and t1 > last_end:
        longest = hold.longest_idle
        if longest is None or t1 - last_end > longest.t1 - longest.t0:
            hold.longest_idle = IdleGap(last_end, t1, last_sql, released_by)
    if t1 > hold.t0:
        hold.t1 = t1
    hold.released_by = released_by


def _inferred_statements(op: str, sql: str) -> tuple[str, ...]:
    """Without the trace hook, the statements are the call's own SQL."""
    if op == "close_read":
        return ()  # closing a cursor runs no statement
    if op == "commit":
        return ("COMMIT",)
    if op == "rollback":
        return ("ROLLBACK",)
    return (sql,)


def _end_txn(state: _ConnState, t: int, released_by: str) -> None:
    if state.write is not None:
        _close_hold(state.write, t, released_by, state.last_end, state.last_sql)
        state.write_holds.append(state.write)
    if state.read is not None:
        _close_hold(state.read, t, released_by, state.last_end, state.last_sql)
        state.read_holds.append(state.read)
    state.write = state.read = None
    state.had_read = False
    state.implicit_txn = False
