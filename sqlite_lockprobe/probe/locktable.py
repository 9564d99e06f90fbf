"""The OS lock table of a database file, decoded into SQLite's lock names. Standard library
only: inspect reads it from outside, and the probe samples it inside a waiting program (during
`run` and `trace`) to name a holder that is none of the recorded connections.

SQLite's unix VFS locks with fcntl() POSIX advisory locks (src/os_unix.c):
- on the database file, bytes from PENDING_BYTE: SHARED is a read lock on the 510-byte shared
  range, RESERVED a write lock on RESERVED_BYTE, PENDING a write lock on PENDING_BYTE, and
  EXCLUSIVE a write lock on the whole shared range (the lower locks stay held);
- in WAL mode, on the -shm file: one byte per WAL lock from UNIX_SHM_BASE = 120 (WAL_WRITE_LOCK,
  WAL_CKPT_LOCK, WAL_RECOVER_LOCK, WAL_READ_LOCK(0..4), wal.c), and the "dead-man switch" byte
  UNIX_SHM_DMS = 128 that every connection holds a read lock on while the -shm is mapped.
POSIX locks belong to a process, not a connection: the kernel merges the locks of all
connections in one process, so this can name a process, never a connection.

Reading the table takes no lock: /proc/locks on Linux, else fcntl(F_GETLK), which only asks.
Inside a program that uses the database, never open and close the database file: closing any
descriptor of a file drops every POSIX lock the process holds on it (fcntl(2); os_unix.c keeps
its own descriptors open for this reason). `sample_holders` borrows SQLite's descriptors instead.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# os_unix.c / sqliteInt.h
PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
SHARED_LAST = SHARED_FIRST + SHARED_SIZE - 1
# os_unix.c UNIX_SHM_BASE ((22+SQLITE_SHM_NLOCK)*4) and UNIX_SHM_DMS (UNIX_SHM_BASE+8)
SHM_LOCK_BASE = 120
SHM_NLOCK = 8
SHM_DMS = SHM_LOCK_BASE + SHM_NLOCK
# wal.c
WAL_WRITE_LOCK = 0
WAL_CKPT_LOCK = 1
WAL_RECOVER_LOCK = 2
WAL_READ_LOCK_FIRST = 3

DB_LOCK_LEVELS = ("SHARED", "RESERVED", "PENDING", "EXCLUSIVE")
_SLOT_NAMES = {
    WAL_WRITE_LOCK: "WAL_WRITE_LOCK",
    WAL_CKPT_LOCK: "WAL_CKPT_LOCK",
    WAL_RECOVER_LOCK: "WAL_RECOVER_LOCK",
}


@dataclass(frozen=True)
class RangeLock:
    """One lock record as the OS reports it. `end` is inclusive; None means to end of file.
    `pid` is None for open-file-description (OFD) locks, which belong to no process."""

    file: str  # "db" or "shm"
    pid: int | None
    kind: str  # "read" or "write"
    start: int
    end: int | None
    flavour: str = "POSIX"  # POSIX, OFDLCK or FLOCK as /proc/locks names it

    def covers(self, first: int, last: int | None = None) -> bool:
        """Whether this lock overlaps the byte range first..last (inclusive)."""
        last = first if last is None else last
        return self.start <= last and (self.end is None or self.end >= first)


@dataclass(frozen=True)
class SqliteLock:
    """A lock in SQLite's terms: SHARED..EXCLUSIVE on the database file, or a WAL lock slot
    (WAL_WRITE_LOCK, WAL_CKPT_LOCK, WAL_RECOVER_LOCK, WAL_READ_LOCK(N), DMS) in the -shm."""

    file: str
    name: str
    kind: str
    read_mark: int | None = None  # N for WAL_READ_LOCK(N)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "kind": self.kind,
            "read_mark": self.read_mark,
        }


def decode_db_locks(locks: Iterable[RangeLock]) -> list[SqliteLock]:
    """One process's locks on the database file as its SQLite lock level (os_unix.c unixLock).

    The kernel merges adjacent ranges of one process, so decide from the bytes covered, not
    from the records: e.g. PENDING+RESERVED+EXCLUSIVE is one write lock over 0x40000000..0x400001ff.
    """
    locks = list(locks)
    posix = [lock for lock in locks if lock.flavour != "FLOCK"]
    write = [lock for lock in posix if lock.kind == "write"]
    read = [lock for lock in posix if lock.kind == "read"]
    result: list[SqliteLock] = []
    if any(lock.covers(SHARED_FIRST, SHARED_LAST) for lock in write):
        result.append(SqliteLock("db", "EXCLUSIVE", "write"))
    elif any(lock.covers(PENDING_BYTE) for lock in write):
        result.append(SqliteLock("db", "PENDING", "write"))
    elif any(lock.covers(RESERVED_BYTE) for lock in write):
        result.append(SqliteLock("db", "RESERVED", "write"))
    elif any(lock.covers(SHARED_FIRST, SHARED_LAST) or lock.covers(PENDING_BYTE) for lock in read):
        # A read lock on PENDING_BYTE alone is the moment of acquiring SHARED.
        result.append(SqliteLock("db", "SHARED", "read"))
    sqlite_bytes = (PENDING_BYTE, SHARED_LAST)
    for lock in posix:
        if not lock.covers(*sqlite_bytes):
            result.append(SqliteLock("db", f"other lock on bytes {_span(lock)}", lock.kind))
    for lock in locks:
        if lock.flavour == "FLOCK":
            result.append(SqliteLock("db", "flock", lock.kind))
    return result


def decode_shm_locks(locks: Iterable[RangeLock]) -> list[SqliteLock]:
    """One process's locks on the -shm file as WAL lock slots, one entry per slot held."""
    result: list[SqliteLock] = []
    locks = [lock for lock in locks if lock.flavour != "FLOCK"]
    for slot in range(SHM_NLOCK):
        for lock in locks:
            if lock.covers(SHM_LOCK_BASE + slot):
                if slot >= WAL_READ_LOCK_FIRST:
                    mark = slot - WAL_READ_LOCK_FIRST
                    result.append(SqliteLock("shm", f"WAL_READ_LOCK({mark})", lock.kind, mark))
                else:
                    result.append(SqliteLock("shm", _SLOT_NAMES[slot], lock.kind))
                break
    for lock in locks:
        if lock.covers(SHM_DMS):
            result.append(SqliteLock("shm", "DMS", lock.kind))
            break
    return result


def _span(lock: RangeLock) -> str:
    end = "EOF" if lock.end is None else str(lock.end)
    return f"{lock.start}-{end}"


# ---- /proc/locks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcLocksLine:
    """One granted lock from /proc/locks (fs/locks.c lock_get_status)."""

    flavour: str
    kind: str
    pid: int | None
    major: int
    minor: int
    inode: int
    start: int
    end: int | None


def parse_proc_locks(text: str) -> list[ProcLocksLine]:
    """Granted POSIX/OFD/FLOCK locks. Lines marked "->" are blocked waiters and are skipped:
    they hold nothing. Unknown or malformed lines are skipped rather than trusted."""
    result = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or "->" in parts:
            continue
        flavour, _mode, access, pid_text, device, start, end = parts[1:8]
        if flavour not in ("POSIX", "OFDLCK", "FLOCK") or access not in ("READ", "WRITE"):
            continue
        try:
            major, minor, inode = device.split(":")
            pid = int(pid_text)
            entry = ProcLocksLine(
                flavour=flavour,
                kind="read" if access == "READ" else "write",
                pid=pid if pid > 0 else None,
                major=int(major, 16),
                minor=int(minor, 16),
                inode=int(inode),
                start=int(start),
                end=None if end == "EOF" else int(end),
            )
        except ValueError:
            continue
        result.append(entry)
    return result


def proc_locks_for(
    lines: list[ProcLocksLine], targets: dict[str, os.stat_result]
) -> list[RangeLock]:
    keys = {
        (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino): name for name, st in targets.items()
    }
    result = []
    for line in lines:
        name = keys.get((line.major, line.minor, line.inode))
        if name is not None:
            result.append(RangeLock(name, line.pid, line.kind, line.start, line.end, line.flavour))
    return result


# ---- fcntl(F_GETLK) probes ------------------------------------------------------------------

# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t.
_FLOCK = struct.Struct("hhqqi4x")
_DB_PROBES = ((PENDING_BYTE, 1), (RESERVED_BYTE, 1), (SHARED_FIRST, SHARED_SIZE))
_SHM_PROBES = tuple((SHM_LOCK_BASE + slot, 1) for slot in range(SHM_NLOCK)) + ((SHM_DMS, 1),)


def probe_locks(fd: int, file: str, ranges: Iterable[tuple[int, int]]) -> list[RangeLock]:
    """Ask the kernel, with F_GETLK, which lock would block a write lock on each range.

    F_GETLK never takes a lock. It names one conflicting holder per probe, so several readers
    of the same byte show up as one. Locks held by this process never conflict with it.
    """
    found: dict[tuple[int | None, str, int, int | None], RangeLock] = {}
    for start, length in ranges:
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        reply = fcntl.fcntl(fd, fcntl.F_GETLK, request)
        l_type, _whence, l_start, l_len, l_pid = _FLOCK.unpack(reply)
        if l_type == fcntl.F_UNLCK:
            continue
        kind = "write" if l_type == fcntl.F_WRLCK else "read"
        end = None if l_len == 0 else l_start + l_len - 1
        pid = l_pid if l_pid > 0 else None
        found[(pid, kind, l_start, end)] = RangeLock(file, pid, kind, l_start, end)
    return list(found.values())


def decode_process_locks(locks: Iterable[RangeLock]) -> list[SqliteLock]:
    """One process's locks on the database and -shm files, in SQLite's terms."""
    locks = list(locks)
    decoded = decode_db_locks(lock for lock in locks if lock.file == "db")
    return decoded + decode_shm_locks(lock for lock in locks if lock.file == "shm")


# ---- sampling the holders from inside a waiting program -----------------------------------------


@dataclass(frozen=True)
class HeldLock:
    """One SQLite lock held by one process at the moment of a sample (pid None: an OFD lock)."""

    pid: int | None
    file: str
    name: str
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "file": self.file, "lock": self.name, "kind": self.kind}


@dataclass(frozen=True)
class HolderSample:
    """The SQLite locks every process held on a database at one moment, and where the table
    came from: "/proc/locks", "F_GETLK" (one holder per lock byte, never this process) or
    "unavailable" (with the reason)."""

    source: str
    locks: tuple[HeldLock, ...]
    note: str | None = None


def sample_holders(db_path: str, proc_locks: str = "/proc/locks") -> HolderSample:
    """Who holds which SQLite lock on `db_path` (and its -shm) right now, without taking a lock
    and without opening the database file (see the module docstring).

    Costs a stat of each file and one read of /proc/locks (its size grows with the locks held on
    the whole machine); the probe calls it only while a connection is waiting."""
    targets: dict[str, os.stat_result] = {}
    for name, path in (("db", db_path), ("shm", db_path + "-shm")):
        try:
            targets[name] = os.stat(path)
        except OSError:
            continue
    if "db" not in targets:
        return HolderSample("unavailable", (), "the database file is gone")
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as proc:
            text = proc.read()
    except OSError:
        return _sample_with_getlk(targets)
    relevant = _lines_about(text, {st.st_ino for st in targets.values()})
    ranges = proc_locks_for(parse_proc_locks(relevant), targets)
    return HolderSample("/proc/locks", _held_by_pid(ranges))


def _lines_about(text: str, inodes: set[int]) -> str:
    """The /proc/locks lines whose MAJ:MIN:INODE field ends with one of `inodes`, found with
    str.find: a busy server lists thousands of locks, and parsing them all would hold the
    waiting thread (and the GIL) for tens of milliseconds."""
    found = []
    for inode in inodes:
        needle = f":{inode} "
        at = text.find(needle)
        while at != -1:
            start = text.rfind("\n", 0, at) + 1
            end = text.find("\n", at)
            end = len(text) if end == -1 else end
            found.append(text[start:end])
            at = text.find(needle, end)
    return "\n".join(found)


def _held_by_pid(ranges: Iterable[RangeLock]) -> tuple[HeldLock, ...]:
    by_pid: dict[int | None, list[RangeLock]] = {}
    for span in ranges:
        by_pid.setdefault(span.pid, []).append(span)
    held = []
    for pid in sorted(by_pid, key=lambda p: -1 if p is None else p):
        for lock in decode_process_locks(by_pid[pid]):
            if lock.name == "DMS" and lock.kind == "read":
                continue  # every connection with the -shm mapped holds this; it blocks nobody
            if lock.name.startswith("other lock") or lock.name == "flock":
                continue
            held.append(HeldLock(pid, lock.file, lock.name, lock.kind))
    return tuple(held)


def _sample_with_getlk(targets: dict[str, os.stat_result]) -> HolderSample:
    """F_GETLK on a descriptor SQLite already has open on each file: asking never takes a lock,
    and borrowing (never opening, never closing) keeps this process's own locks intact."""
    wanted = {(st.st_dev, st.st_ino): name for name, st in targets.items()}
    found: dict[str, int] = {}
    for fd in _open_descriptors():
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        name = wanted.get((st.st_dev, st.st_ino))
        if name is not None and name not in found:
            found[name] = fd
    if "db" not in found:
        return HolderSample("unavailable", (), "no /proc/locks and no open descriptor to ask")
    ranges: list[RangeLock] = []
    try:
        ranges += probe_locks(found["db"], "db", _DB_PROBES)
        if "shm" in found:
            ranges += probe_locks(found["shm"], "shm", _SHM_PROBES)
    except OSError as exc:
        return HolderSample("unavailable", (), f"F_GETLK failed: {exc.strerror or exc}")
    return HolderSample("F_GETLK", _held_by_pid(ranges))


_MAX_FD_SCAN = 4096


def _open_descriptors() -> list[int]:
    """This process's open file descriptors: /proc/self/fd or /dev/fd where listed, else every
    number below the descriptor limit (capped)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
        except OSError:
            continue
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        limit = 1024
    if limit < 0:
        limit = _MAX_FD_SCAN
    return list(range(min(limit, _MAX_FD_SCAN)))


def describe_pid(pid: int) -> dict[str, Any]:
    """Name, command line and owner of a process from /proc at the moment of a sample, so the
    report can name a holder that has exited since; {} where /proc does not say."""
    found: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            found["name"] = comm.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read(_CMDLINE_LIMIT)
        found["cmdline"] = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]
        found["uid"] = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        pass
    return found


_CMDLINE_LIMIT = 2048
