"""The diagnosis input: what happened, as spans in time (all times are monotonic nanoseconds).

Built from the event log by `timeline.build_timeline`; detectors read only these types, so
they can be unit-tested on small hand-built timelines. They are all read-only once built. The
three made per call or per transaction (`Call`, `IdleGap`, `LockHold`: hundreds of thousands
on a long log) are slotted and not frozen, as nothing hashes them: a frozen dataclass's
__init__ sets each field through object.__setattr__, several times slower, and building them
was a quarter of a large log's analysis. The timeline builder fills a LockHold in while its
hold is open.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlite_lockprobe.events.resultcodes import (  # noqa: F401 (the diagnosis imports them from here)
    SQLITE_BUSY,
    SQLITE_BUSY_RECOVERY,
    SQLITE_BUSY_SNAPSHOT,
    SQLITE_BUSY_TIMEOUT,
    SQLITE_LOCKED,
    SQLITE_LOCKED_SHAREDCACHE,
)

_T = TypeVar("_T")


NS_PER_MS = 1_000_000

# LockHold.released_by when the holder's process recorded nothing after its last event
# although the recording went on (killed before its last events were written, or exited with
# the transaction open): the hold's end is unknown and it is cut at that last event.
END_NOT_RECORDED = "end not recorded"
# LockHold.released_by of a read hold kept by a statement left unfinished outside any
# transaction (a cursor not exhausted): `t1` is the last moment it was seen open.
UNFINISHED_STATEMENT = "unfinished statement"

# SQLite's message when a COMMIT or a RELEASE meets the connection's own statements still
# running (vdbe.c OP_AutoCommit: "cannot commit transaction - SQL statements in progress";
# OP_Savepoint: "cannot release savepoint - SQL statements in progress"). The code is
# SQLITE_BUSY, but no lock and no other connection is involved: the counter it checks
# (db->nVdbeWrite) counts this connection's own unfinished writing statements, such as an
# INSERT ... RETURNING whose rows were not fetched yet.
STATEMENTS_IN_PROGRESS = "SQL statements in progress"


def busy_from_own_statements(error: int | None, message: str | None) -> bool:
    """A SQLITE_BUSY that the connection's own unfinished statements caused, not a lock."""
    return error == SQLITE_BUSY and STATEMENTS_IN_PROGRESS in (message or "")


@dataclass(frozen=True)
class Actor:
    """Who did something: the connection and the process, thread and asyncio task driving it."""

    conn: str
    worker: str
    group: str
    pid: int
    thread: int
    task: str | None = None
    call_site: str | None = None

    def describe(self) -> str:
        where = f"pid {self.pid} thread {self.thread}"
        if self.task:
            where += f" task {self.task}"
        site = f" at {self.call_site}" if self.call_site else ""
        return f"{self.worker} ({where}, connection {self.conn}){site}"

    def same_thread_as(self, other: Actor) -> bool:
        return self.pid == other.pid and self.thread == other.thread


@dataclass(frozen=True)
class ConnectionInfo:
    """How a connection was opened. `isolation` is Python's isolation_level (None = autocommit
    mode); `timeout_ms` is its busy timeout; `instrumented` is False where the probe's hooks
    could not be installed (reduced detail)."""

    conn: str
    group: str
    pid: int
    timeout_ms: int
    isolation: str | None
    journal_mode: str
    instrumented: bool = True


@dataclass(slots=True)
class Call:
    """One application call into sqlite3: an execute, a commit or a rollback.

    `statements` are the SQL statements SQLite actually ran for it (from the trace hook),
    including Python's implicit BEGIN. `error` is the primary result code (5 = SQLITE_BUSY,
    6 = SQLITE_LOCKED), `ext_error` the extended one (517 = SQLITE_BUSY_SNAPSHOT).
    `busy_calls` counts busy-handler invocations during the call."""

    actor: Actor
    t0: int
    t1: int
    op: str
    sql: str
    statements: tuple[str, ...] = ()
    busy_calls: int = 0
    error: int | None = None
    ext_error: int | None = None
    message: str | None = None
    in_txn_after: bool = False

    @property
    def conn(self) -> str:
        return self.actor.conn

    @property
    def failed_busy(self) -> bool:
        """Failed with SQLITE_BUSY because of a lock (not of its own unfinished statements)."""
        return self.error == SQLITE_BUSY and not self.busy_from_own_statements

    @property
    def busy_from_own_statements(self) -> bool:
        return busy_from_own_statements(self.error, self.message)

    @property
    def failed_locked(self) -> bool:
        return self.error == SQLITE_LOCKED

    @property
    def duration_ns(self) -> int:
        return self.t1 - self.t0


@dataclass(frozen=True)
class BusyWait:
    """A call that met a lock held by someone else: it invoked the busy handler at least once,
    or failed with SQLITE_BUSY (other than a BUSY from its own unfinished statements, which is
    no wait: see STATEMENTS_IN_PROGRESS). `had_read` says the waiter's transaction had already read
    (held SHARED or a WAL snapshot) before this call: the upgrade-deadlock precondition."""

    waiter: Actor
    call: Call
    handler_calls: int
    failed: bool
    timeout_ms: int
    had_read: bool
    phase: str  # "begin" | "read" | "write" | "commit" | "other"

    @property
    def t0(self) -> int:
        return self.call.t0

    @property
    def t1(self) -> int:
        return self.call.t1

    @property
    def duration_ms(self) -> float:
        return (self.call.t1 - self.call.t0) / NS_PER_MS

    @property
    def code(self) -> int | None:
        return self.call.ext_error or self.call.error


@dataclass(slots=True)
class IdleGap:
    """Time a transaction spent in the application between two of its statements."""

    t0: int
    t1: int
    before_sql: str
    after_sql: str

    @property
    def duration_ms(self) -> float:
        return (self.t1 - self.t0) / NS_PER_MS


@dataclass(slots=True)
class LockHold:
    """A span during which one connection held a lock on the database.

    kind "write": RESERVED and above in rollback-journal mode, the WAL write lock in WAL mode.
    kind "read": an open read transaction (SHARED, or a WAL read snapshot).
    `taken_by` is the statement that took the lock, `released_by` what ended it (COMMIT,
    ROLLBACK, close, error, end-of-run, process killed, or END_NOT_RECORDED: then `t1` is only
    the last moment its process recorded). `autocommit_false` says Python 3.12's
    autocommit=False opened it (a BEGIN right after every commit and rollback, so one is always
    open);
    `failed_commit_t` is when a COMMIT of this transaction failed and left it open.
    `implicit_begin` is True when Python's sqlite3 opened
    the transaction itself (legacy DEFERRED BEGIN before DML). `in_statements_ns` is time
    spent inside SQLite calls during the hold; the rest was idle in the application.

    A hold starts when the lock was granted: for a statement that waited in the busy handler,
    at its last retry, not when the statement began (it held nothing while it waited)."""

    holder: Actor
    kind: str
    t0: int
    t1: int
    taken_by: str
    released_by: str
    implicit_begin: bool = False
    in_statements_ns: int = 0
    longest_idle: IdleGap | None = None
    app_idle_ns: int | None = None
    own_wait_ns: int = 0
    autocommit_false: bool = False
    failed_commit_t: int | None = None
    failed_commit_code: int | None = None
    # The statement of the holder's longest own wait during the hold, and how long it waited.
    own_wait_sql: str = ""
    own_wait_longest_ns: int = 0

    @property
    def duration_ms(self) -> float:
        return (self.t1 - self.t0) / NS_PER_MS

    @property
    def idle_ns(self) -> int:
        return max(0, (self.t1 - self.t0) - self.in_statements_ns)

    @property
    def scheduling_delay_ns(self) -> int:
        """Idle time that no step of the application explains: the holder was ready to go on
        but waited to be scheduled (a busy event loop, the GIL shared with many threads).
        Known only where the application's own sleeps and awaits are recorded (`run`:
        `app_idle_ns` is set); 0 when unknown."""
        if self.app_idle_ns is None:
            return 0
        return max(0, self.idle_ns - self.app_idle_ns)

    @property
    def explained_ns(self) -> int:
        """What the holder itself spent: the hold's length less its scheduling delay and
        less `own_wait_ns`, the time the holder was itself blocked in the busy handler (a
        rollback-mode COMMIT waiting for other connections' SHARED locks to clear)."""
        return max(0, (self.t1 - self.t0) - self.scheduling_delay_ns - self.own_wait_ns)

    def overlaps(self, t0: int, t1: int) -> bool:
        return self.t0 < t1 and t0 < self.t1


@dataclass(frozen=True)
class WalSample:
    """A reading of the -wal file during the run (size in bytes; frames from the -shm header
    when it could be read: mx_frame = last valid frame, backfilled = frames checkpointed)."""

    t: int
    wal_bytes: int
    mx_frame: int | None = None
    backfilled: int | None = None


@dataclass(frozen=True)
class OpenStatement:
    """A statement left unfinished between calls: a cursor stepped but not exhausted or closed
    (`run`'s open_read steps). While open it holds its read: a SHARED lock or WAL snapshot
    and, in a shared cache, a read lock on its tables (btree.c querySharedCacheTableLock); on
    its own connection it blocks DROP TABLE (vdbe.c OP_Destroy)."""

    holder: Actor
    sql: str
    t0: int
    t1: int
    closed_by: str  # "cursor closed", "connection closed", "end-of-run", END_NOT_RECORDED

    def open_at(self, t: int) -> bool:
        return self.t0 <= t < self.t1


@dataclass(frozen=True)
class DatabaseFilesystem:
    """Where a database file lives, as recorded when the run or trace began."""

    db: str
    fstype: str
    mount_point: str | None
    source: str | None
    network_reason: str | None


@dataclass(frozen=True)
class OsLock:
    """One SQLite lock a process held, as the OS lock table showed it during a wait. The OS
    names processes, never connections (POSIX locks are per process). Process details come
    from /proc at sample time or from psutil afterwards; None where neither could tell."""

    pid: int | None
    file: str  # "db" or "shm"
    name: str  # SHARED, RESERVED, PENDING, EXCLUSIVE, WAL_WRITE_LOCK, WAL_READ_LOCK(N)...
    kind: str  # "read" or "write"
    process_name: str | None = None
    cmdline: tuple[str, ...] | None = None
    user: str | None = None
    uid: int | None = None
    started: float | None = None  # epoch seconds


@dataclass(frozen=True)
class OsLockSample:
    """The OS lock table of database file `db`, read by the probe while `conn` waited in the
    call that began at `call_t0` (or right after that call failed with SQLITE_BUSY). It
    describes the file, so it serves every waiter on that file at moment `t`."""

    t: int
    conn: str
    call_t0: int | None
    source: str  # "/proc/locks", "F_GETLK" or "unavailable"
    locks: tuple[OsLock, ...] = ()
    note: str | None = None
    db: str | None = None


# A reading taken this long after a failed wait ended still shows who held the lock then: the
# probe reads at most every 20 ms per file (probe.HOLDERS_MIN_GAP_NS).
SAMPLE_AFTER_WAIT_NS = 20 * NS_PER_MS


@dataclass(frozen=True)
class Timeline:
    """Everything a detector may look at, sorted by time."""

    connections: dict[str, ConnectionInfo]
    calls: tuple[Call, ...]
    waits: tuple[BusyWait, ...]
    write_holds: tuple[LockHold, ...]
    read_holds: tuple[LockHold, ...] = ()
    wal_samples: tuple[WalSample, ...] = ()
    journal_mode: str = "delete"
    page_size: int = 4096
    wal_autocheckpoint: int = 1000
    reduced_detail: bool = False
    # False when the log was long and only the calls that failed or waited were kept.
    calls_complete: bool = True
    os_lock_samples: tuple[OsLockSample, ...] = ()
    recorded_pids: frozenset[int] = frozenset()
    conn_databases: dict[str, str] = field(default_factory=dict)
    open_statements: tuple[OpenStatement, ...] = ()
    filesystems: tuple[DatabaseFilesystem, ...] = ()
    _hold_starts: list[int] = field(default_factory=list, repr=False, compare=False)
    _write_index: _SpanIndex = field(init=False, repr=False, compare=False)
    _read_index: _SpanIndex = field(init=False, repr=False, compare=False)
    _sample_times: list[int] = field(init=False, repr=False, compare=False)
    _memo: dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen dataclass: derived indexes are set once, here, and never change. Fresh objects,
        # so dataclasses.replace() (which passes _hold_starts along) cannot double them.
        object.__setattr__(self, "_hold_starts", [h.t0 for h in self.write_holds])
        object.__setattr__(self, "_write_index", _SpanIndex(self.write_holds))
        object.__setattr__(self, "_read_index", _SpanIndex(self.read_holds))
        object.__setattr__(self, "_sample_times", [s.t for s in self.os_lock_samples])

    def memo(self, key: str, compute: Callable[[], _T]) -> _T:
        """A value derived from this timeline, computed once and shared by the detectors
        (such as which pattern owns each wait: causes.wait_causes)."""
        if key not in self._memo:
            self._memo[key] = compute()
        value: _T = self._memo[key]
        return value

    @property
    def is_wal(self) -> bool:
        return self.journal_mode.lower() == "wal"

    @property
    def origin_ns(self) -> int:
        """The earliest recorded moment: evidence gives times relative to it ("+12.5 ms")."""
        firsts = [
            spans[0].t0
            for spans in (self.calls, self.waits, self.write_holds, self.read_holds)
            if spans
        ]
        return min(firsts) if firsts else 0

    def write_holders_during(
        self, t0: int, t1: int, exclude_conn: str | None = None
    ) -> list[LockHold]:
        """The write-lock holds that overlap [t0, t1), other than exclude_conn's own."""
        return self._write_index.overlapping(t0, t1, exclude_conn)

    def read_holders_during(
        self, t0: int, t1: int, exclude_conn: str | None = None
    ) -> list[LockHold]:
        """The read transactions (SHARED locks or WAL snapshots) that overlap [t0, t1)."""
        return self._read_index.overlapping(t0, t1, exclude_conn)

    def busy_errors(self) -> list[BusyWait]:
        return [w for w in self.waits if w.failed]

    def open_statements_at(self, t: int) -> list[OpenStatement]:
        """Statements left unfinished at moment t, on any connection."""
        return [s for s in self.open_statements if s.open_at(t)]

    def os_samples_of(self, wait: BusyWait) -> list[OsLockSample]:
        """The OS lock table samples taken during this wait (or right after it failed)."""
        return [
            s for s in self.os_lock_samples if s.conn == wait.waiter.conn and s.call_t0 == wait.t0
        ]


class _SpanIndex:
    """Overlap queries on holds sorted by start, in O((k + 1) log n) for k results.

    A max-segment tree over the holds' ends: a subtree whose latest end is at or before t0
    cannot overlap and is skipped whole, so long holds never force a linear scan."""

    def __init__(self, holds: tuple[LockHold, ...]) -> None:
        self.holds = holds
        self.starts = [h.t0 for h in holds]
        size = 1
        while size < len(holds):
            size *= 2
        self.size = size
        never = -(2**63)
        # Node i's children are 2i and 2i+1, the leaves start at `size`. Filled a level at a
        # time with slices, not a Python loop per node: a long log has a million nodes.
        max_end = [never] * (2 * size)
        max_end[size : size + len(holds)] = [h.t1 for h in holds]
        width = size
        while width > 1:
            children = max_end[width : 2 * width]
            max_end[width // 2 : width] = [
                a if a >= b else b for a, b in zip(children[0::2], children[1::2], strict=True)
            ]
            width //= 2
        self.max_end = max_end

    def overlapping(self, t0: int, t1: int, exclude_conn: str | None = None) -> list[LockHold]:
        """Holds with start < t1 and end > t0, in their original (start) order."""
        limit = bisect_left(self.starts, t1)
        if limit == 0:
            return []
        # Holds starting inside [t0, t1) overlap unless empty at t0: a plain slice. Only the
        # ones that started earlier need the tree, to find those still open at t0.
        first = bisect_left(self.starts, t0, 0, limit)
        found: list[LockHold] = []
        stack = [(1, 0, self.size)]
        while stack:
            node, lo, hi = stack.pop()
            if lo >= first or self.max_end[node] <= t0:
                continue
            if node >= self.size:
                h = self.holds[lo]
                if h.holder.conn != exclude_conn:
                    found.append(h)
                continue
            mid = (lo + hi) // 2
            stack.append((2 * node + 1, mid, hi))
            stack.append((2 * node, lo, mid))
        found.extend(
            h for h in self.holds[first:limit] if h.t1 > t0 and h.holder.conn != exclude_conn
        )
        return found
