"""The live OS lock table of a database, decoded into SQLite's lock names (locktable.py says
how SQLite's POSIX locks map to SHARED, RESERVED, PENDING, EXCLUSIVE and the WAL locks), plus
the processes that hold the locks or have the files open (psutil), and the filesystem the
database lives on. POSIX locks belong to a process: this names a process, never a connection.
Reading the table takes no lock: /proc/locks on Linux, else fcntl(F_GETLK), which only asks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from sqlite_lockprobe.probe.locktable import (  # noqa: F401
    _DB_PROBES,
    _SHM_PROBES,
    DB_LOCK_LEVELS,
    PENDING_BYTE,
    RESERVED_BYTE,
    SHARED_FIRST,
    SHARED_LAST,
    SHARED_SIZE,
    SHM_DMS,
    SHM_LOCK_BASE,
    SHM_NLOCK,
    WAL_CKPT_LOCK,
    WAL_READ_LOCK_FIRST,
    WAL_RECOVER_LOCK,
    WAL_WRITE_LOCK,
    ProcLocksLine,
    RangeLock,
    SqliteLock,
    decode_db_locks,
    decode_shm_locks,
    parse_proc_locks,
    probe_locks,
    proc_locks_for,
)

# The decoding and the filesystem checks are standard library only (the probe uses them too);
# they are re-exported here, where inspect and its tests have always found them.
from sqlite_lockprobe.sources.inspect.filesystems import (  # noqa: F401
    NETWORK_FILESYSTEMS,
    NETWORK_FUSE,
    Filesystem,
    MountEntry,
    filesystem_of,
    is_network_filesystem,
    mount_for,
    network_filesystem_reason,
    parse_mountinfo,
)

# ---- reading the table from outside (inspect) -------------------------------------------------


def _probe_file(path: str, file: str, ranges: Iterable[tuple[int, int]]) -> list[RangeLock]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return probe_locks(fd, file, ranges)
    finally:
        os.close(fd)


def reserved_lock_held(db_path: str) -> bool:
    """Whether another process holds RESERVED or more, asked the way os_unix.c
    unixCheckReservedLock asks: F_GETLK for a write lock on RESERVED_BYTE."""
    return bool(_probe_file(db_path, "db", [(RESERVED_BYTE, 1)]))


@dataclass(frozen=True)
class LockTable:
    """The raw locks on the database and -shm files, and where they were read from."""

    locks: tuple[RangeLock, ...]
    source: str  # "/proc/locks", "fcntl F_GETLK" or "unavailable"
    notes: tuple[str, ...] = ()


def read_lock_table(
    db_path: str,
    db_stat: os.stat_result,
    shm_path: str | None,
    shm_stat: os.stat_result | None,
    proc_locks: str = "/proc/locks",
) -> LockTable:
    """All locks on the database and -shm: /proc/locks when it names any, else F_GETLK probes.

    Matching /proc/locks by device and inode can miss on filesystems whose stat() device differs
    from the kernel's (btrfs subvolumes); the probes then catch what is held.
    """
    targets = {"db": db_stat}
    if shm_stat is not None:
        targets["shm"] = shm_stat
    notes: list[str] = []
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as proc:
            text = proc.read()
    except OSError:
        text = None
    if text is not None:
        found = proc_locks_for(parse_proc_locks(text), targets)
        if found:
            return LockTable(tuple(found), "/proc/locks")
    probed: list[RangeLock] = []
    try:
        probed += _probe_file(db_path, "db", _DB_PROBES)
        if shm_path is not None and shm_stat is not None:
            probed += _probe_file(shm_path, "shm", _SHM_PROBES)
    except OSError as exc:
        notes.append(f"lock probe failed: {exc.strerror or exc}")
        return LockTable((), "unavailable", tuple(notes))
    if probed or text is None:
        notes.append("F_GETLK names one holder per lock byte; more readers may share a byte")
        return LockTable(tuple(probed), "fcntl F_GETLK", tuple(notes))
    return LockTable((), "/proc/locks")


# ---- processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessInfo:
    """What psutil can tell about a process; fields are None where access was denied."""

    pid: int
    name: str | None
    cmdline: tuple[str, ...] | None
    user: str | None
    started: float | None  # epoch seconds
    alive: bool = True

    def age_seconds(self, now: float) -> float | None:
        return None if self.started is None else max(0.0, now - self.started)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "name": self.name,
            "cmdline": None if self.cmdline is None else list(self.cmdline),
            "user": self.user,
            "started": self.started,
            "age_seconds": self.age_seconds(now),
            "alive": self.alive,
        }


def process_info(pid: int) -> ProcessInfo:
    """Name, command line, user and start time; what cannot be read is left None."""
    try:
        proc = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ProcessInfo(pid, None, None, None, None, alive=False)
    except psutil.Error:
        return ProcessInfo(pid, None, None, None, None)

    def ask(method: Any) -> Any:
        try:
            return method()
        except psutil.Error:
            return None

    cmdline = ask(proc.cmdline)
    return ProcessInfo(
        pid=pid,
        name=ask(proc.name),
        cmdline=None if cmdline is None else tuple(cmdline),
        user=ask(proc.username),
        started=ask(proc.create_time),
    )


@dataclass(frozen=True)
class OpenFiles:
    """Which of the database's files each process has open, and whose fds we could not read."""

    by_pid: dict[int, tuple[str, ...]] = field(default_factory=dict)
    unreadable_pids: int = 0


def find_openers(files: dict[str, str]) -> OpenFiles:
    """Processes that have any of `files` ({role: realpath}) open.

    Linux: list /proc/PID/fd and compare link targets with the paths; only a link whose name
    matches is stat()ed, to compare device and inode (this also finds a process in another mount
    namespace). Elsewhere: psutil's open_files(). Processes we may not look into are counted.
    """
    if os.path.isdir("/proc/self/fd"):
        return _find_openers_proc(files)
    return _find_openers_psutil(files)


def _find_openers_proc(files: dict[str, str]) -> OpenFiles:
    identities: dict[tuple[int, int], str] = {}
    for role, path in files.items():
        with contextlib.suppress(OSError):
            st = os.stat(path)
            identities[(st.st_dev, st.st_ino)] = role
    basenames = {os.path.basename(path) for path in files.values()}
    by_pid: dict[int, set[str]] = {}
    unreadable = 0
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            unreadable += 1
            continue
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            base = os.path.basename(target.removesuffix(" (deleted)"))
            if base not in basenames:
                continue
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            found = identities.get((st.st_dev, st.st_ino))
            if found is not None:
                by_pid.setdefault(pid, set()).add(found)
    return OpenFiles({pid: _ordered(roles) for pid, roles in by_pid.items()}, unreadable)


def _find_openers_psutil(files: dict[str, str]) -> OpenFiles:
    roles_by_path = {path: role for role, path in files.items()}
    by_pid: dict[int, set[str]] = {}
    unreadable = 0
    for proc in psutil.process_iter():
        try:
            opened = proc.open_files()
        except psutil.AccessDenied:
            unreadable += 1
            continue
        except psutil.Error:
            continue
        for item in opened:
            role = roles_by_path.get(os.path.realpath(item.path))
            if role is not None:
                by_pid.setdefault(proc.pid, set()).add(role)
    return OpenFiles({pid: _ordered(roles) for pid, roles in by_pid.items()}, unreadable)


FILE_ROLES = ("db", "wal", "shm", "journal")


def _ordered(roles: Iterable[str]) -> tuple[str, ...]:
    return tuple(role for role in FILE_ROLES if role in set(roles))
