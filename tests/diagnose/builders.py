"""Readable hand-built timelines for detector tests: times in milliseconds, names for actors.

tl = TimelineBuilder()
a = tl.conn("a")
b = tl.conn("b", timeout_ms=5000)
tl.write_hold(a, 0, 6000, taken_by="INSERT INTO t VALUES (1)")
tl.wait(b, 100, 5100, failed=True, handler_calls=40)
timeline = tl.build()
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose.model import (
    NS_PER_MS,
    SQLITE_BUSY,
    SQLITE_LOCKED,
    Actor,
    BusyWait,
    Call,
    ConnectionInfo,
    IdleGap,
    LockHold,
    OpenStatement,
    OsLock,
    OsLockSample,
    Timeline,
    WalSample,
)

DEFAULT_SQL = {
    "begin": "BEGIN IMMEDIATE",
    "read": "SELECT * FROM t",
    "write": "UPDATE t SET n = n + 1",
    "commit": "COMMIT",
    "other": "CREATE TABLE x (a)",
}


def ns(t_ms: float) -> int:
    return round(t_ms * NS_PER_MS)


class TimelineBuilder:
    """Collects connections, holds, waits and WAL samples; build() sorts them by time."""

    def __init__(
        self,
        journal_mode: str = "delete",
        reduced_detail: bool = False,
        page_size: int = 4096,
        wal_autocheckpoint: int = 1000,
    ) -> None:
        self.journal_mode = journal_mode
        self.reduced_detail = reduced_detail
        self.page_size = page_size
        self.wal_autocheckpoint = wal_autocheckpoint
        self.connections: dict[str, ConnectionInfo] = {}
        self.timeouts: dict[str, int] = {}
        self.calls: list[Call] = []
        self.waits: list[BusyWait] = []
        self.write_holds: list[LockHold] = []
        self.read_holds: list[LockHold] = []
        self.wal_samples: list[WalSample] = []
        self.os_samples: list[OsLockSample] = []
        self.open_statements: list[OpenStatement] = []

    def conn(
        self,
        name: str,
        *,
        timeout_ms: int = 5000,
        pid: int = 100,
        thread: int | None = None,
        task: str | None = None,
        worker: str | None = None,
        instrumented: bool = True,
        isolation: str | None = "",
    ) -> Actor:
        """A connection driven by its own thread unless `thread` says otherwise."""
        thread_id = thread if thread is not None else 1000 + len(self.connections)
        actor = Actor(
            conn=name,
            worker=worker or f"worker-{name}",
            group="g",
            pid=pid,
            thread=thread_id,
            task=task,
        )
        self.connections[name] = ConnectionInfo(
            conn=name,
            group="g",
            pid=pid,
            timeout_ms=timeout_ms,
            isolation=isolation,
            journal_mode=self.journal_mode,
            instrumented=instrumented,
        )
        self.timeouts[name] = timeout_ms
        return actor

    def write_hold(
        self,
        actor: Actor,
        t0_ms: float,
        t1_ms: float,
        *,
        taken_by: str = "INSERT INTO t VALUES (1)",
        released_by: str = "COMMIT",
        in_statements_ms: float | None = None,
        idle: tuple[float, float, str, str] | None = None,
        implicit_begin: bool = False,
    ) -> LockHold:
        hold = self._hold(
            "write",
            actor,
            t0_ms,
            t1_ms,
            taken_by,
            released_by,
            in_statements_ms,
            idle,
            implicit_begin,
        )
        self.write_holds.append(hold)
        return hold

    def read_hold(
        self,
        actor: Actor,
        t0_ms: float,
        t1_ms: float,
        *,
        taken_by: str = "SELECT * FROM t",
        released_by: str = "COMMIT",
    ) -> LockHold:
        hold = self._hold("read", actor, t0_ms, t1_ms, taken_by, released_by, None, None, False)
        self.read_holds.append(hold)
        return hold

    def _hold(
        self,
        kind: str,
        actor: Actor,
        t0_ms: float,
        t1_ms: float,
        taken_by: str,
        released_by: str,
        in_statements_ms: float | None,
        idle: tuple[float, float, str, str] | None,
        implicit_begin: bool,
    ) -> LockHold:
        inside = ns(in_statements_ms) if in_statements_ms is not None else ns(t1_ms - t0_ms)
        gap = IdleGap(ns(idle[0]), ns(idle[1]), idle[2], idle[3]) if idle else None
        return LockHold(
            holder=actor,
            kind=kind,
            t0=ns(t0_ms),
            t1=ns(t1_ms),
            taken_by=taken_by,
            released_by=released_by,
            implicit_begin=implicit_begin,
            in_statements_ns=inside,
            longest_idle=gap,
        )

    def wait(
        self,
        actor: Actor,
        t0_ms: float,
        t1_ms: float,
        *,
        failed: bool = False,
        handler_calls: int | None = None,
        phase: str = "write",
        had_read: bool = False,
        code: int | None = None,
        sql: str | None = None,
        timeout_ms: int | None = None,
    ) -> BusyWait:
        """A busy wait; a failure defaults to SQLITE_BUSY with some handler calls."""
        calls = 10 if handler_calls is None else handler_calls
        error = SQLITE_BUSY if failed else None
        ext = (code or SQLITE_BUSY) if failed else None
        call = Call(
            actor=actor,
            t0=ns(t0_ms),
            t1=ns(t1_ms),
            op="commit" if phase == "commit" else "execute",
            sql=sql or DEFAULT_SQL[phase],
            statements=(sql or DEFAULT_SQL[phase],),
            busy_calls=calls,
            error=error,
            ext_error=ext,
            message="database is locked" if failed else None,
            in_txn_after=failed,
        )
        self.calls.append(call)
        wait = BusyWait(
            waiter=actor,
            call=call,
            handler_calls=calls,
            failed=failed,
            timeout_ms=timeout_ms if timeout_ms is not None else self.timeouts[actor.conn],
            had_read=had_read,
            phase=phase,
        )
        self.waits.append(wait)
        return wait

    def wal_sample(
        self,
        t_ms: float,
        wal_bytes: int,
        mx_frame: int | None = None,
        backfilled: int | None = None,
    ) -> None:
        self.wal_samples.append(WalSample(ns(t_ms), wal_bytes, mx_frame, backfilled))

    def locked(
        self,
        actor: Actor,
        t_ms: float,
        sql: str,
        message: str = "database table is locked",
        ext: int | None = SQLITE_LOCKED,
    ) -> Call:
        """A call that failed at once with SQLITE_LOCKED (ext 262: in a shared cache)."""
        call = Call(
            actor=actor,
            t0=ns(t_ms),
            t1=ns(t_ms + 0.1),
            op="execute",
            sql=sql,
            statements=(sql,),
            error=SQLITE_LOCKED,
            ext_error=ext,
            message=message,
        )
        self.calls.append(call)
        return call

    def open_statement(
        self, actor: Actor, sql: str, t0_ms: float, t1_ms: float, closed_by: str = "cursor closed"
    ) -> OpenStatement:
        """A cursor left unfinished from t0 to t1 (an open_read step)."""
        statement = OpenStatement(actor, sql, ns(t0_ms), ns(t1_ms), closed_by)
        self.open_statements.append(statement)
        return statement

    def os_sample(
        self,
        wait: BusyWait,
        t_ms: float,
        *locks: tuple[int, str],
        source: str = "/proc/locks",
        name: str | None = "sqlite3",
        cmdline: tuple[str, ...] | None = ("sqlite3", "app.db"),
    ) -> OsLockSample:
        """The OS lock table seen during `wait`: (pid, lock name) pairs."""
        sample = OsLockSample(
            t=ns(t_ms),
            conn=wait.waiter.conn,
            call_t0=wait.t0,
            source=source,
            locks=tuple(
                OsLock(
                    pid=pid,
                    file="shm" if lock.startswith("WAL_") else "db",
                    name=lock,
                    kind="read" if lock == "SHARED" or lock.startswith("WAL_READ") else "write",
                    process_name=name,
                    cmdline=cmdline,
                    user="alice",
                )
                for pid, lock in locks
            ),
        )
        self.os_samples.append(sample)
        return sample

    def build(self) -> Timeline:
        def by_time(span: LockHold | BusyWait | Call) -> tuple[int, int, str]:
            actor = (
                span.holder
                if isinstance(span, LockHold)
                else (span.waiter if isinstance(span, BusyWait) else span.actor)
            )
            return (span.t0, span.t1, actor.conn)

        return Timeline(
            connections=dict(self.connections),
            calls=tuple(sorted(self.calls, key=by_time)),
            waits=tuple(sorted(self.waits, key=by_time)),
            write_holds=tuple(sorted(self.write_holds, key=by_time)),
            read_holds=tuple(sorted(self.read_holds, key=by_time)),
            wal_samples=tuple(sorted(self.wal_samples, key=lambda s: s.t)),
            journal_mode=self.journal_mode,
            page_size=self.page_size,
            wal_autocheckpoint=self.wal_autocheckpoint,
            reduced_detail=self.reduced_detail,
            os_lock_samples=tuple(sorted(self.os_samples, key=lambda s: s.t)),
            recorded_pids=frozenset(c.pid for c in self.connections.values()),
            open_statements=tuple(sorted(self.open_statements, key=lambda s: s.t0)),
        )
