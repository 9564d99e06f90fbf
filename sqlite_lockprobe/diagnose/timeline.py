"""From the event log to the Timeline the detectors read: calls with their actors, busy
waits, and the lock holds of every connection (when it took the write lock, with which
statement, until which COMMIT/ROLLBACK, and how that time was spent)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.diagnose.model import (
    SQLITE_BUSY,
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


@dataclass
class _OpenHold:
    actor: Actor
    kind: str
    t0: int
    taken_by: str
    implicit_begin: bool
    autocommit_false: bool = False
    failed_commit: Call | None = None
    in_statements_ns: int = 0
    app_idle_ns: int | None = None
    own_wait_ns: int = 0
    last_end: int = 0
    last_sql: str = ""
    longest_idle: IdleGap | None = None

    def add_call(self, call: Call) -> None:
        start = max(call.t0, self.t0)
        if self.last_end and call.t0 > self.last_end:
            gap = IdleGap(self.last_end, call.t0, self.last_sql, call.sql)
            if (
                self.longest_idle is None
                or gap.t1 - gap.t0 > self.longest_idle.t1 - self.longest_idle.t0
            ):
                self.longest_idle = gap
        self.in_statements_ns += max(0, call.t1 - start)
        if call.busy_calls and call.t0 >= self.t0:
            self.own_wait_ns += call.t1 - call.t0
        self.last_end = call.t1
        self.last_sql = call.sql

    def close(self, t1: int, released_by: str) -> LockHold:
        if self.last_end and t1 > self.last_end:
            # Idle until the end that was no call (a close, the end of the run): a gap too.
            trailing = IdleGap(self.last_end, t1, self.last_sql, released_by)
            if self.longest_idle is None or t1 - self.last_end > (
                self.longest_idle.t1 - self.longest_idle.t0
            ):
                self.longest_idle = trailing
        return LockHold(
            holder=self.actor,
            kind=self.kind,
            t0=self.t0,
            t1=max(t1, self.t0),
            taken_by=self.taken_by,
            released_by=released_by,
            implicit_begin=self.implicit_begin,
            in_statements_ns=self.in_statements_ns,
            longest_idle=self.longest_idle,
            app_idle_ns=self.app_idle_ns,
            own_wait_ns=self.own_wait_ns,
            autocommit_false=self.autocommit_false,
            failed_commit_t=self.failed_commit.t1 if self.failed_commit else None,
            failed_commit_code=(
                (self.failed_commit.ext_error or self.failed_commit.error)
                if self.failed_commit
                else None
            ),
        )

    def add_app_idle(self, t0: int, t1: int) -> None:
        """Time the application itself spent in a recorded step (sleep, await, wait)."""
        overlap = max(0, t1 - max(t0, self.t0))
        self.app_idle_ns = (self.app_idle_ns or 0) + overlap


@dataclass
class _ConnState:
    info: ConnectionInfo
    track_app_idle: bool = False
    worker: str = ""
    had_read: bool = False
    write: _OpenHold | None = None
    read: _OpenHold | None = None
    implicit_txn: bool = False
    # Python >= 3.12 autocommit=False: seen once its commit/rollback ran a BEGIN after itself.
    autocommit_false: bool = False
    closed_holds: list[LockHold] = field(default_factory=list)
    open_cursors: list[tuple[Actor, str, int]] = field(default_factory=list)
    closed_cursors: list[OpenStatement] = field(default_factory=list)

    def track_cursor(self, call: Call) -> None:
        """open_read leaves a statement unfinished; close_read ends the oldest with its SQL."""
        if call.op == "open_read" and call.error is None:
            self.open_cursors.append((call.actor, call.sql, call.t1))
        elif call.op == "close_read":
            for i, (actor, sql, t0) in enumerate(self.open_cursors):
                if sql == call.sql:
                    del self.open_cursors[i]
                    self.closed_cursors.append(
                        OpenStatement(actor, sql, t0, call.t1, "cursor closed")
                    )
                    break

    def end_cursors(self, t: int, closed_by: str) -> None:
        for actor, sql, t0 in self.open_cursors:
            self.closed_cursors.append(OpenStatement(actor, sql, t0, max(t, t0), closed_by))
        self.open_cursors.clear()


# Every call is kept (renderers draw them) up to this many; past it, only the calls that
# failed or met a busy lock, so a log of millions of events stays in bounded memory.
KEEP_ALL_CALLS_UP_TO = 100_000


def build_timeline(
    events: Iterable[dict[str, Any]], keep_all_calls_up_to: int = KEEP_ALL_CALLS_UP_TO
) -> Timeline:
    """Build the timeline in one pass over events in time order (each connection's own events
    must be in order; spans are sorted at the end). Spans are kept, and every call up to
    `keep_all_calls_up_to`; past that only the calls that failed or met a busy lock, so
    memory grows with the problems, not with the log."""
    meta: dict[str, Any] = {}
    workers: dict[str, dict[str, Any]] = {}
    conns: dict[str, _ConnState] = {}
    calls: list[Call] = []
    calls_complete = True
    waits: list[BusyWait] = []
    wal: list[WalSample] = []
    interned = _Interner()
    samples: list[OsLockSample] = []
    filesystems: dict[str, DatabaseFilesystem] = {}
    last_call_t0: dict[str, int] = {}
    pids: set[int] = set()
    last_t = 0
    for event in events:
        kind = event["k"]
        last_t = max(last_t, int(event.get("t1") or event.get("t") or 0))
        if kind == "call":
            state = conns.get(event["conn"])
            if state is None:
                continue  # a call on a connection opened before recording began
            call = _call(event, state.info, workers, interned)
            last_call_t0[call.conn] = call.t0
            notable = call.error is not None or call.busy_calls
            if notable or calls_complete:
                calls.append(call)
                if calls_complete and len(calls) > keep_all_calls_up_to:
                    calls_complete = False
                    calls = [c for c in calls if c.error is not None or c.busy_calls]
            wait = _busy_wait(call, state)
            if wait is not None:
                waits.append(wait)
            _advance(state, call)
            state.track_cursor(call)
        elif kind == "open":
            info = ConnectionInfo(
                conn=event["conn"],
                group=event.get("group") or "",
                pid=int(event.get("pid") or 0),
                timeout_ms=int(event.get("timeout_ms") or 0),
                isolation=event.get("isolation"),
                journal_mode=(event.get("journal_mode") or "").lower(),
                instrumented=bool(event.get("instrumented")),
            )
            pids.add(info.pid)
            # `run` records every sleep/await/wait step: idle time in a hold that no step
            # explains is then known to be scheduling delay.
            conns[info.conn] = _ConnState(
                info, str(meta.get("source", "")).startswith("run "), event.get("worker") or ""
            )
        elif kind == "close":
            state = conns.get(event["conn"])
            if state is not None:
                _end_txn(state, int(event["t"]), "close")
                state.end_cursors(int(event["t"]), "connection closed")
        elif kind == "worker":
            workers[event["worker"]] = event
            if event.get("pid"):
                pids.add(int(event["pid"]))
        elif kind == "worker_end" and str(event.get("error") or "").startswith("killed by"):
            # The process died: the OS dropped its locks, and SQLite rolls its transaction back
            # (hot journal, or WAL frames never committed) when the database is next opened.
            for state in conns.values():
                if state.worker == event["worker"]:
                    _end_txn(state, int(event["t"]), "process killed")
        elif kind == "holders":
            conn = event.get("conn") or ""
            samples.append(
                OsLockSample(
                    t=int(event["t"]),
                    conn=conn,
                    call_t0=last_call_t0.get(conn),
                    source=event.get("source") or "unavailable",
                    locks=_os_locks(list(event.get("locks") or ())),
                    note=event.get("note"),
                    db=event.get("db"),
                )
            )
        elif kind == "idle":
            state = conns.get(event.get("conn") or "")
            if state is not None:
                for hold in (state.write, state.read):
                    if hold is not None:
                        hold.add_app_idle(int(event["t0"]), int(event["t1"]))
        elif kind == "wal":
            wal.append(
                WalSample(
                    int(event["t"]),
                    int(event.get("bytes") or 0),
                    event.get("mx_frame"),
                    event.get("backfilled"),
                )
            )
        elif kind == "filesystem":
            db = str(event.get("db") or "")
            filesystems.setdefault(
                db,
                DatabaseFilesystem(
                    db,
                    str(event.get("type") or "unknown"),
                    event.get("mount_point"),
                    event.get("source"),
                    event.get("network_reason"),
                ),
            )
        elif kind == "meta":
            meta = event
            if event.get("pid"):
                pids.add(int(event["pid"]))
    for state in conns.values():
        _end_txn(state, last_t, "end-of-run")
        state.end_cursors(last_t, "end-of-run")
    holds = [h for s in conns.values() for h in s.closed_holds]
    holds.sort(key=lambda h: (h.t0, h.t1, h.holder.conn))
    calls.sort(key=lambda c: (c.t0, c.t1, c.conn))
    waits.sort(key=lambda w: (w.t0, w.t1, w.waiter.conn))
    infos = {c: s.info for c, s in conns.items()}
    journal = (meta.get("journal_mode") or _most_common_journal(infos) or "delete").lower()
    return Timeline(
        connections=infos,
        calls=tuple(calls),
        calls_complete=calls_complete,
        waits=tuple(waits),
        write_holds=tuple(h for h in holds if h.kind == "write"),
        read_holds=tuple(h for h in holds if h.kind == "read"),
        wal_samples=tuple(wal),
        journal_mode=journal,
        page_size=int(meta.get("page_size") or 4096),
        wal_autocheckpoint=int(meta.get("wal_autocheckpoint") or 1000),
        reduced_detail=any(not i.instrumented for i in infos.values()),
        os_lock_samples=tuple(sorted(samples, key=lambda s: s.t)),
        recorded_pids=frozenset(pids),
        conn_databases=_conn_databases(samples, infos),
        filesystems=tuple(filesystems.values()),
        open_statements=tuple(
            sorted(
                (c for st in conns.values() for c in st.closed_cursors),
                key=lambda c: (c.t0, c.holder.conn),
            )
        ),
    )


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


class _Interner:
    """One object per distinct actor, SQL text and statement list: a long log repeats the same
    few thousand of each millions of times."""

    def __init__(self) -> None:
        self.actors: dict[tuple[Any, ...], Actor] = {}
        self.texts: dict[str, str] = {}
        self.statements: dict[tuple[str, ...], tuple[str, ...]] = {}

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


def _call(
    event: dict[str, Any],
    info: ConnectionInfo,
    workers: dict[str, dict[str, Any]],
    interned: _Interner,
) -> Call:
    worker = event.get("worker") or info.conn
    actor = interned.actor(
        (
            info.conn,
            worker,
            info.group or (workers.get(worker) or {}).get("group", ""),
            info.pid,
            int(event.get("thread") or 0),
            event.get("task"),
            event.get("site"),
        )
    )
    return Call(
        actor=actor,
        t0=int(event["t0"]),
        t1=int(event["t1"]),
        op=event.get("op") or "execute",
        sql=interned.text(event.get("sql") or ""),
        statements=interned.statement_list(event.get("stmts")),
        busy_calls=int(event.get("busy") or 0),
        error=event.get("err"),
        ext_error=event.get("ext"),
        message=event.get("msg"),
        in_txn_after=bool(event.get("in_txn")),
    )


def _phase(call: Call) -> str:
    if call.op in ("begin", "commit", "rollback"):
        return call.op
    kind = statement_kind(call.sql)
    if kind in ("begin", "begin-write"):
        return "begin"
    return {"write": "write", "read": "read", "commit": "commit"}.get(kind, "other")


def _busy_wait(call: Call, state: _ConnState) -> BusyWait | None:
    if call.busy_calls <= 0 and call.error != SQLITE_BUSY:
        return None
    return BusyWait(
        waiter=call.actor,
        call=call,
        handler_calls=call.busy_calls,
        failed=call.error == SQLITE_BUSY,
        timeout_ms=state.info.timeout_ms,
        had_read=state.had_read,
        phase=_phase(call),
    )


def _advance(state: _ConnState, call: Call) -> None:
    """Move one connection's lock state past one call."""
    statements = call.statements or _inferred_statements(call)
    kinds = [statement_kind(s) for s in statements]
    ok = call.error is None
    acquired_at = call.t1 if call.busy_calls else call.t0
    if state.write is not None:
        state.write.add_call(call)
    if state.read is not None and state.read is not state.write:
        state.read.add_call(call)
    if ok:
        app_kind = statement_kind(call.sql)
        if any(k == "begin" for k in kinds) and app_kind not in ("begin", "begin-write"):
            state.implicit_txn = True  # Python's sqlite3 issued BEGIN before this DML
        for sql, kind in zip(statements, kinds, strict=True):
            if kind == "begin-write" and state.write is None:
                state.write = _new_hold(state, call, "write", acquired_at, sql, False)
            elif kind == "write" and state.write is None:
                state.write = _new_hold(
                    state, call, "write", acquired_at, call.sql, state.implicit_txn
                )
            elif kind in ("read", "write") and state.read is None:
                state.read = _new_hold(state, call, "read", call.t0, call.sql, state.implicit_txn)
        if any(k in ("read", "write") for k in kinds):
            state.had_read = True
    if not ok and call.in_txn_after and _is_commit(call, kinds):
        # A failed COMMIT leaves the transaction open: until a ROLLBACK, it keeps its locks.
        for hold in (state.write, state.read):
            if hold is not None and hold.failed_commit is None:
                hold.failed_commit = call
    if ok and call.in_txn_after and _reopened(kinds):
        # Python >= 3.12 with autocommit=False runs BEGIN right after COMMIT/ROLLBACK
        # (Modules/_sqlite/connection.c), so a transaction is always open.
        _end_txn(state, call.t1, "COMMIT" if "commit" in kinds else "ROLLBACK")
        state.implicit_txn = state.autocommit_false = True
        return
    if not call.in_txn_after:
        if ok and "commit" in kinds:
            released = "COMMIT"
        elif ok and "rollback" in kinds:
            released = "ROLLBACK"
        elif ok:
            released = "autocommit"
        else:
            released = "error"
        _end_txn(state, call.t1, released)


def _is_commit(call: Call, kinds: list[str]) -> bool:
    return call.op == "commit" or "commit" in kinds


def _reopened(kinds: list[str]) -> bool:
    """A COMMIT or ROLLBACK followed by a BEGIN within one call (autocommit=False)."""
    ended = False
    for kind in kinds:
        if kind in ("commit", "rollback"):
            ended = True
        elif kind == "begin" and ended:
            return True
    return False


def _new_hold(
    state: _ConnState, call: Call, kind: str, t0: int, taken_by: str, implicit: bool
) -> _OpenHold:
    hold = _OpenHold(
        call.actor, kind, t0, taken_by, implicit, autocommit_false=state.autocommit_false
    )
    if state.track_app_idle:
        hold.app_idle_ns = 0
    hold.add_call(call)
    return hold


def _inferred_statements(call: Call) -> tuple[str, ...]:
    """Without the trace hook, the statements are the call's own SQL."""
    if call.op == "close_read":
        return ()  # closing a cursor runs no statement
    if call.op == "commit":
        return ("COMMIT",)
    if call.op == "rollback":
        return ("ROLLBACK",)
    return (call.sql,)


def _end_txn(state: _ConnState, t: int, released_by: str) -> None:
    if state.write is not None:
        state.closed_holds.append(state.write.close(t, released_by))
    if state.read is not None:
        state.closed_holds.append(state.read.close(t, released_by))
    state.write = state.read = None
    state.had_read = False
    state.implicit_txn = False
