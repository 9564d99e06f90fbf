"""`inspect`: what a database's files and the OS lock table say right now, without touching it.

`inspect_database(path)` gathers the facts (headers, locks, processes, filesystem) into one
frozen `Inspection`; `inspection_findings(inspection)` turns them into findings. Nothing here
opens the database with SQLite, takes a lock or creates a file: see dbfile.py and oslocks.py.

Call it from a process that has no SQLite connection to the same database: POSIX locks are per
process, and closing any descriptor of a file drops all of the process's locks on it (fcntl(2)).
When /proc/locks shows this process holding locks on the file, inspect refuses (exit code 9).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.findings import Advice, Finding, sort_findings
from sqlite_lockprobe.sources.inspect import dbfile, oslocks
from sqlite_lockprobe.sources.inspect.dbfile import (
    DatabaseHeader,
    JournalHeader,
    ShmHeader,
    WalHeader,
)
from sqlite_lockprobe.sources.inspect.filesystems import network_filesystem_finding
from sqlite_lockprobe.sources.inspect.oslocks import Filesystem, ProcessInfo, SqliteLock

EXIT_OWN_LOCKS = 9

# SQLITE_DEFAULT_WAL_AUTOCHECKPOINT: a commit that leaves the WAL above this many frames runs a
# PASSIVE checkpoint (https://www.sqlite.org/wal.html#automatic_checkpoint).
WAL_AUTOCHECKPOINT_FRAMES = 1000
LARGE_WAL_FACTOR = 4

CANNOT_SEE = (
    "busy_timeout: a per-connection setting, never stored in the file (lockprobe trace shows it)",
    "transaction modes (BEGIN DEFERRED/IMMEDIATE/EXCLUSIVE) and which statement took a lock",
    "which connection or thread holds a lock: POSIX locks belong to a process, not a connection",
    "waiters: SQLite's busy handler sleeps and retries, so a process waiting for a lock holds "
    "nothing and does not show here",
    "processes on other machines (network filesystems) or whose /proc entries we may not read",
    "connections in locking_mode=EXCLUSIVE WAL, or using the unix-dotfile/unix-none VFS",
)


@dataclass(frozen=True)
class DatabaseFacts:
    """The database file and its header; `header` is None for an empty (0-byte) file, which
    SQLite treats as an empty database."""

    path: str
    size_bytes: int
    mtime: float
    header: DatabaseHeader | None
    page_count: int
    journal_mode: str  # "wal", "rollback" or "empty"

    @property
    def header_page_count_exceeds_file(self) -> bool:
        """In WAL mode pages may still live in the WAL; in rollback mode SQLite calls this
        corrupt (btree.c lockBtree)."""
        h = self.header
        return bool(
            h and h.header_page_count_valid and self.page_count * h.page_size > self.size_bytes
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "mtime": self.mtime,
            "page_count": self.page_count,
            "journal_mode": self.journal_mode,
            "header": None if self.header is None else self.header.to_json(),
        }


@dataclass(frozen=True)
class WalFacts:
    """The -wal file. `frames_in_file` is a high-water mark; the shm's max_frame is the truth."""

    path: str
    size_bytes: int
    header: WalHeader | None
    frames_in_file: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "frames_in_file": self.frames_in_file,
            "header": None if self.header is None else self.header.to_json(),
        }


@dataclass(frozen=True)
class ShmFacts:
    path: str
    size_bytes: int
    header: ShmHeader | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "header": None if self.header is None else self.header.to_json(),
        }


@dataclass(frozen=True)
class JournalFacts:
    """The rollback journal; `hot` by pager.c hasHotJournal's rule (see dbfile.journal_is_hot);
    `in_use` when a process holds RESERVED or more, so the journal is its live transaction's."""

    path: str
    size_bytes: int
    header: JournalHeader
    hot: bool
    in_use: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "hot": self.hot,
            "in_use": self.in_use,
            "header": self.header.to_json(),
        }


@dataclass(frozen=True)
class Holder:
    """A process that holds a lock on the database or -shm, or has one of its files open.
    `pid` is None for an OFD lock, which the kernel attributes to no process."""

    pid: int | None
    process: ProcessInfo | None
    locks: tuple[SqliteLock, ...]
    open_files: tuple[str, ...]
    meanings: tuple[str, ...]

    @property
    def headline(self) -> str:
        return self.meanings[0]

    @property
    def lock_names(self) -> tuple[str, ...]:
        return tuple(lock.name for lock in self.locks)

    def holds(self, name: str) -> bool:
        return name in self.lock_names

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "process": None if self.process is None else self.process.to_json(now),
            "locks": [lock.to_json() for lock in self.locks],
            "open_files": list(self.open_files),
            "meaning": self.headline,
            "meanings": list(self.meanings),
        }


@dataclass(frozen=True)
class Inspection:
    """Everything inspect saw at one moment (`taken_at`, epoch seconds)."""

    database: DatabaseFacts
    wal: WalFacts | None
    shm: ShmFacts | None
    journal: JournalFacts | None
    filesystem: Filesystem
    holders: tuple[Holder, ...]
    lock_source: str
    notes: tuple[str, ...]
    taken_at: float

    def holder(self, pid: int) -> Holder | None:
        return next((h for h in self.holders if h.pid == pid), None)

    def to_json(self) -> dict[str, Any]:
        """The per-command sections of the JSON report (see docs/inspect.md)."""
        return {
            "database": self.database.to_json(),
            "wal": None if self.wal is None else self.wal.to_json(),
            "shm": None if self.shm is None else self.shm.to_json(),
            "journal": None if self.journal is None else self.journal.to_json(),
            "filesystem": self.filesystem.to_json(),
            "holders": [h.to_json(self.taken_at) for h in self.holders],
            "lock_source": self.lock_source,
            "notes": list(self.notes),
            "taken_at": self.taken_at,
            "cannot_see": list(CANNOT_SEE),
        }


# ---- gathering --------------------------------------------------------------------------------


def inspect_database(path: str | os.PathLike[str]) -> Inspection:
    """Read the database's headers and the live lock table. Read-only; raises LockprobeError
    (with the exit codes listed in dbfile.py, and EXIT_OWN_LOCKS) for unusable input."""
    shown = os.fspath(path)
    dbfile.stat_database(shown)
    # SQLite resolves symbolic links, so its -wal/-shm/-journal sit beside the real file.
    real = os.path.realpath(shown)
    companions = {role: real + suffix for role, suffix in _SUFFIXES.items()}
    db_stat = dbfile.stat_database(real)
    shm_stat = _stat_or_none(companions["shm"])
    table = oslocks.read_lock_table(real, db_stat, companions["shm"], shm_stat)
    if any(lock.pid == os.getpid() for lock in table.locks):
        raise LockprobeError(
            f"{shown}: this process holds SQLite locks on it; inspecting from here would "
            "release them (POSIX locks are per process): run inspect from another process",
            EXIT_OWN_LOCKS,
        )
    notes = list(table.notes)
    database = _database_facts(shown, real)
    wal = _wal_facts(companions["wal"], notes)
    shm = _shm_facts(companions["shm"], notes)
    openers = oslocks.find_openers({"db": real, **{r: p for r, p in companions.items()}})
    if openers.unreadable_pids:
        notes.append(
            f"{openers.unreadable_pids} processes' open files could not be read (permission): "
            "run as root or as their user to see them all"
        )
    holders = _holders(table, openers, database.journal_mode, shm)
    reserved_held = any(h.holds(n) for h in holders for n in ("RESERVED", "PENDING", "EXCLUSIVE"))
    journal = _journal_facts(companions["journal"], real, reserved_held, database.page_count, notes)
    return Inspection(
        database=database,
        wal=wal,
        shm=shm,
        journal=journal,
        filesystem=oslocks.filesystem_of(real),
        holders=holders,
        lock_source=table.source,
        notes=tuple(notes),
        taken_at=time.time(),
    )


_SUFFIXES = {"wal": "-wal", "shm": "-shm", "journal": "-journal"}


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _database_facts(shown: str, real: str) -> DatabaseFacts:
    data, st = dbfile.read_head(real, dbfile.DB_HEADER_SIZE)
    if st.st_size == 0:
        return DatabaseFacts(shown, 0, st.st_mtime, None, 0, "empty")
    header = dbfile.parse_database_header(data, shown)
    return DatabaseFacts(
        path=shown,
        size_bytes=st.st_size,
        mtime=st.st_mtime,
        header=header,
        page_count=header.page_count(st.st_size),
        journal_mode=header.journal_mode,
    )


def _companion(path: str, size: int, notes: list[str]) -> tuple[bytes, os.stat_result] | None:
    """Read a -wal/-shm/-journal file if present; say so in the notes when it is unreadable."""
    try:
        return dbfile.read_optional_head(path, size)
    except LockprobeError as exc:
        notes.append(f"cannot read {os.path.basename(path)}: {exc}")
        return None


def _wal_facts(path: str, notes: list[str]) -> WalFacts | None:
    found = _companion(path, dbfile.WAL_HEADER_SIZE, notes)
    if found is None:
        return None
    data, st = found
    header = dbfile.parse_wal_header(data)
    frames = dbfile.wal_frames_in_file(st.st_size, header.page_size) if header else 0
    return WalFacts(path, st.st_size, header, frames)


def _shm_facts(path: str, notes: list[str]) -> ShmFacts | None:
    found = _companion(path, dbfile.SHM_HEADER_SIZE, notes)
    if found is None:
        return None
    data, st = found
    return ShmFacts(path, st.st_size, dbfile.parse_shm_header(data))


def _journal_facts(
    path: str, db_path: str, reserved_held: bool, pages: int, notes: list[str]
) -> JournalFacts | None:
    found = _companion(path, dbfile.JOURNAL_HEADER_SIZE, notes)
    if found is None:
        return None
    data, st = found
    header = dbfile.parse_journal_header(data)
    hot = dbfile.journal_is_hot(header, reserved_held, pages)
    if hot:
        hot = _still_hot(path, data, db_path)
    return JournalFacts(path, st.st_size, header, hot, in_use=reserved_held)


def _still_hot(path: str, first_read: bytes, db_path: str) -> bool:
    """Confirm a hot journal against a writer that started after the lock table was read.

    A live journal is deleted, truncated or zeroed before its writer drops RESERVED (pager.c
    pager_end_transaction), so the same journal header seen before and after a moment with no
    RESERVED holder cannot belong to a live transaction.
    """
    try:
        if oslocks.reserved_lock_held(db_path):
            return False
    except OSError:
        return True  # cannot ask: keep the answer from the lock table
    again = _companion(path, dbfile.JOURNAL_HEADER_SIZE, [])
    return again is not None and again[0] == first_read


def _holders(
    table: oslocks.LockTable,
    openers: oslocks.OpenFiles,
    journal_mode: str,
    shm: ShmFacts | None,
) -> tuple[Holder, ...]:
    pids: list[int | None] = list(sorted({lk.pid for lk in table.locks if lk.pid is not None}))
    pids += sorted(pid for pid in openers.by_pid if pid not in pids)
    if any(lock.pid is None for lock in table.locks):
        pids.append(None)
    read_marks = shm.header.read_marks if shm and shm.header else None
    holders = []
    for pid in pids:
        mine = [lock for lock in table.locks if lock.pid == pid]
        locks = oslocks.decode_db_locks(lk for lk in mine if lk.file == "db")
        locks += oslocks.decode_shm_locks(lk for lk in mine if lk.file == "shm")
        locks.sort(key=_significance)
        meanings = tuple(describe_lock(lock, journal_mode, read_marks) for lock in locks)
        if not meanings:
            meanings = ("has the database open; holds no lock now (idle between transactions)",)
        holders.append(
            Holder(
                pid=pid,
                process=None if pid is None else oslocks.process_info(pid),
                locks=tuple(locks),
                open_files=openers.by_pid.get(pid, ()) if pid is not None else (),
                meanings=meanings,
            )
        )
    holders.sort(key=lambda h: (min((_significance(lk) for lk in h.locks), default=99), h.pid or 0))
    return tuple(holders)


_ORDER = (
    "EXCLUSIVE",
    "PENDING",
    "RESERVED",
    "WAL_RECOVER_LOCK",
    "WAL_WRITE_LOCK",
    "WAL_CKPT_LOCK",
)


def _significance(lock: SqliteLock) -> int:
    """Sort key: the lock that says most about what a process is doing first."""
    if lock.name in _ORDER:
        return _ORDER.index(lock.name)
    if lock.read_mark is not None:
        return 10 if lock.kind == "write" else 11
    if lock.name == "DMS" and lock.kind == "write":
        return 12
    if lock.name == "SHARED":
        return 13
    if lock.name == "DMS":
        return 14
    return 20


def describe_lock(
    lock: SqliteLock, journal_mode: str, read_marks: tuple[int | None, ...] | None = None
) -> str:
    """What holding `lock` means for everybody else, in plain words (lockingv3.html, wal.c)."""
    wal = journal_mode == "wal"
    name = lock.name
    if name == "SHARED":
        if wal:
            return (
                "holds SHARED on the database file, as every open WAL-mode connection does: "
                "blocks nothing but a change of journal mode"
            )
        return (
            "holds SHARED: it is reading (a read transaction is open); a writer can start "
            "(RESERVED) but cannot commit until this read ends"
        )
    if name == "RESERVED":
        return "holds RESERVED: it is writing; other writers wait, readers continue"
    if name == "PENDING":
        return (
            "holds PENDING: it is waiting for readers to finish so it can commit; "
            "new readers are kept out"
        )
    if name == "EXCLUSIVE":
        if wal:
            return (
                "holds EXCLUSIVE on the database file: in WAL mode that is locking_mode=EXCLUSIVE, "
                "a change of journal mode, or the last connection closing and checkpointing; "
                "nobody else can read or write"
            )
        return (
            "holds EXCLUSIVE: it is committing (or in BEGIN EXCLUSIVE); nobody else can read "
            "or write until it finishes"
        )
    if name == "WAL_WRITE_LOCK":
        return "holds the WAL write lock: it is writing; other writers wait; readers continue"
    if name == "WAL_CKPT_LOCK":
        return (
            "holds the WAL checkpoint lock: a checkpoint is running; other checkpoints wait, "
            "readers and the writer continue"
        )
    if name == "WAL_RECOVER_LOCK":
        return (
            "holds the WAL recovery lock: it is rebuilding the WAL index (after a crash, or as "
            "the first connection); other connections wait until it is done"
        )
    if lock.read_mark is not None:
        n = lock.read_mark
        if lock.kind == "write":
            return (
                f"is updating read mark {n} (choosing a snapshot, checkpointing or restarting "
                "the WAL): lasts a moment"
            )
        if n == 0:
            return (
                "has a read transaction open on read mark 0 (reading the database file, "
                "ignoring the WAL): no checkpoint can copy frames until it ends"
            )
        mark = read_marks[n] if read_marks is not None else None
        frame = f" = frame {mark}" if mark is not None else ""
        return (
            f"has a read transaction open (read mark {n}{frame}): a checkpoint cannot copy "
            "frames past its snapshot and the WAL cannot restart until it ends"
        )
    if name == "DMS":
        if lock.kind == "write":
            return "is the first connection to open the WAL index (-shm): it is initialising it"
        return "has the WAL index (-shm) open: an open WAL-mode connection"
    if name == "flock":
        return "holds a flock() lock (another tool or VFS); SQLite's unix VFS does not see it"
    return f"holds a lock outside SQLite's lock bytes ({name}); SQLite does not use it"


# ---- findings ---------------------------------------------------------------------------------

WAL_ADVICE = Advice(
    "Use WAL mode (persistent: set it once) with synchronous=NORMAL: readers and the writer "
    "then no longer block each other.",
    snippets={
        "pragma": "PRAGMA journal_mode=WAL;\nPRAGMA synchronous=NORMAL;",
        "sqlite3": 'conn.execute("PRAGMA journal_mode=WAL")',
        "django": 'OPTIONS={"init_command": "PRAGMA journal_mode=WAL;"}',
        "sqlalchemy": (
            '@event.listens_for(engine, "connect")\n'
            "def _wal(dbapi_connection, _record):\n"
            '    dbapi_connection.execute("PRAGMA journal_mode=WAL")'
        ),
    },
)


def inspection_findings(inspection: Inspection) -> list[Finding]:
    """Problems the file state shows. A healthy database gives an empty list."""
    findings = [
        f
        for f in (
            _hot_journal(inspection),
            _network_filesystem(inspection),
            _large_wal(inspection),
            _rollback_journal_contention(inspection),
        )
        if f is not None
    ]
    return sort_findings(findings)


def _who(holder: Holder) -> str:
    if holder.pid is None:
        return "an OFD lock (no process)"
    name = holder.process.name if holder.process and holder.process.name else "?"
    return f"pid {holder.pid} ({name})"


def _hot_journal(ins: Inspection) -> Finding | None:
    journal = ins.journal
    if journal is None or not journal.hot:
        return None
    sure = ins.lock_source != "unavailable"
    return Finding(
        pattern="hot-journal",
        title="A hot journal: a writer crashed or was killed in the middle of a transaction",
        severity="warning",
        confidence="high" if sure else "medium",
        explanation=(
            "The rollback journal holds the original content of pages that a transaction was "
            "changing when its process died; no process holds RESERVED, so it belongs to no "
            "live transaction. The next connection that reads the database must roll it back "
            "first, which needs write access to the database and its directory; until then "
            "read-only connections fail (SQLITE_READONLY_ROLLBACK)."
        ),
        evidence=(
            f"{journal.path} exists ({journal.size_bytes} bytes), its header is not zeroed, "
            "and no process holds RESERVED, PENDING or EXCLUSIVE on the database",
        ),
        advice=(
            Advice(
                "Do not delete or rename the -journal file: without it the database may be left "
                "half-written (corrupt). Open the database once with a writable connection "
                "(for example `sqlite3 DB 'PRAGMA quick_check'`) as a user who can write the "
                "directory, and SQLite rolls it back."
            ),
            Advice("Find out what killed the writer (OOM killer, a timeout, kill -9, a crash)."),
        ),
        facts={
            "journal": journal.path,
            "journal_bytes": journal.size_bytes,
            "journal_records": journal.header.record_count,
        },
    )


def _network_filesystem(ins: Inspection) -> Finding | None:
    wal = ins.database.journal_mode == "wal"
    return network_filesystem_finding(ins.database.path, ins.filesystem, wal=wal)


def _large_wal(ins: Inspection) -> Finding | None:
    header = ins.database.header
    if header is None or ins.wal is None:
        return None
    page_size = ins.wal.header.page_size if ins.wal.header else header.page_size
    limit = LARGE_WAL_FACTOR * WAL_AUTOCHECKPOINT_FRAMES
    shm = ins.shm.header if ins.shm and ins.shm.header and ins.shm.header.valid else None
    facts: dict[str, Any] = {
        "wal_bytes": ins.wal.size_bytes,
        "wal_frames_in_file": ins.wal.frames_in_file,
        "autocheckpoint_frames": WAL_AUTOCHECKPOINT_FRAMES,
    }
    if shm is not None and shm.frames_not_checkpointed > limit:
        pending = shm.frames_not_checkpointed
        pinning = [
            (h, lock)
            for h in ins.holders
            for lock in h.locks
            if lock.read_mark is not None and lock.kind == "read"
        ]
        facts |= {
            "max_frame": shm.first.max_frame,
            "backfilled": shm.backfilled,
            "frames_not_checkpointed": pending,
            "pinning_pids": sorted({h.pid for h, _ in pinning if h.pid is not None}),
        }
        evidence = [
            f"{pending} frames ({pending * page_size // 1024} KiB) are in the WAL but not yet "
            f"checkpointed (mxFrame {shm.first.max_frame}, nBackfill {shm.backfilled}); "
            f"auto-checkpoint runs at {WAL_AUTOCHECKPOINT_FRAMES}"
        ]
        evidence += [
            f"{_who(h)} has a read transaction open on read mark {lock.read_mark}"
            + (f" (frame {shm.read_marks[lock.read_mark]})" if lock.read_mark else "")
            for h, lock in pinning
        ]
        return Finding(
            pattern="large-wal",
            title=(
                "The WAL is not being checkpointed while readers pin it (checkpoint starvation)"
                if pinning
                else "The WAL holds many frames that no checkpoint has copied"
            ),
            severity="warning" if pinning else "info",
            confidence="medium" if pinning else "low",
            explanation=(
                "A checkpoint can only copy WAL frames that no open read transaction still "
                "needs. While readers hold read marks, the WAL keeps growing and every read "
                "searches a bigger WAL index."
                if pinning
                else "Auto-checkpoint should have copied these frames. No reader pins them now: "
                "wal_autocheckpoint may be off, or long readers pinned the WAL until recently."
            ),
            evidence=tuple(evidence),
            advice=_wal_advice(),
            facts=facts,
        )
    if ins.wal.frames_in_file > limit:
        size_mib = ins.wal.size_bytes / 1048576
        return Finding(
            pattern="large-wal",
            title="The -wal file is much larger than auto-checkpoint keeps it",
            severity="info",
            confidence="low",
            explanation=(
                "The -wal file is reused from its start after a checkpoint, never shrunk, so its "
                "size is a high-water mark: at some point frames piled up (long readers "
                "starving checkpoints, or one very large transaction)."
            ),
            evidence=(
                f"{ins.wal.path} is {size_mib:.1f} MiB, room for {ins.wal.frames_in_file} frames; "
                f"auto-checkpoint runs at {WAL_AUTOCHECKPOINT_FRAMES} frames",
            ),
            advice=_wal_advice(),
            facts=facts,
        )
    return None


def _wal_advice() -> tuple[Advice, ...]:
    return (
        Advice("Keep read transactions short, and leave moments with no reader at all."),
        Advice(
            "Run a TRUNCATE checkpoint at quiet times and cap the file with journal_size_limit.",
            snippets={
                "pragma": "PRAGMA wal_checkpoint(TRUNCATE);\nPRAGMA journal_size_limit=67108864;"
            },
        ),
    )


def _rollback_journal_contention(ins: Inspection) -> Finding | None:
    if ins.database.journal_mode != "rollback":
        return None
    users = [h for h in ins.holders if h.pid is not None and (h.locks or "db" in h.open_files)]
    if len(users) < 2:
        return None
    blocking = [h for h in users if {"PENDING", "EXCLUSIVE"} & set(h.lock_names)]
    writing = [h for h in users if h.holds("RESERVED")]
    readers = [h for h in users if h.holds("SHARED")]
    stalled = bool(blocking) or bool(writing and readers)
    return Finding(
        pattern="rollback-journal-contention",
        title="Readers and writers in several processes block each other (rollback journal)",
        severity="warning" if stalled else "info",
        confidence="medium",
        explanation=(
            "In rollback-journal mode a writer must take EXCLUSIVE to commit, which waits for "
            "every reader's SHARED lock to clear (PENDING keeps new readers out meanwhile), and "
            "while it commits nobody can read. With more than one process on the file this is "
            "the most common source of 'database is locked'."
        ),
        evidence=tuple(f"{_who(h)}: {h.headline}" for h in users),
        advice=(WAL_ADVICE,),
        facts={"pids": [h.pid for h in users], "stalled_now": stalled},
    )
