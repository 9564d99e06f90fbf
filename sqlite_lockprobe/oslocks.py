"""The live OS lock table of a database, decoded into SQLite's lock names, plus the processes
that hold the locks or have the files open, and the filesystem the database lives on.

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
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

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


def _proc_locks_for(
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
        found = _proc_locks_for(parse_proc_locks(text), targets)
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


# ---- filesystem -------------------------------------------------------------------------------

# Filesystems where SQLite's POSIX locks are unreliable: locks are not seen by other machines, are
# emulated by a server, or are dropped (SMB "nobrl", Docker Desktop bind mounts). See
# https://www.sqlite.org/lockingv3.html#how_to_corrupt and https://www.sqlite.org/wal.html
# ("WAL does not work over a network filesystem": the -shm must be shared memory on one host).
NETWORK_FILESYSTEMS: dict[str, str] = {
    "nfs": "NFS: locks go through the NFS lock manager, are lost on lease/server trouble",
    "nfs4": "NFS: locks go through the NFS lock manager, are lost on lease/server trouble",
    "cifs": "SMB/CIFS: byte-range locks are emulated by the server; 'nobrl' drops them",
    "smb3": "SMB/CIFS: byte-range locks are emulated by the server; 'nobrl' drops them",
    "smbfs": "SMB/CIFS: byte-range locks are emulated by the server; 'nobrl' drops them",
    "9p": "9p (WSL2 Windows drives, VM shares): POSIX locks are not shared with the host",
    "virtiofs": "virtiofs (VM/Docker Desktop shares): locks are not shared with the host",
    "afs": "AFS: byte-range locks are not supported across clients",
    "ceph": "CephFS: a network filesystem; WAL shared memory does not work across clients",
    "glusterfs": "GlusterFS: a network filesystem; WAL shared memory does not work across clients",
    "lustre": "Lustre: a network filesystem; locking depends on the mount's flock option",
    "gpfs": "GPFS: a network filesystem; WAL shared memory does not work across clients",
    "beegfs": "BeeGFS: a network filesystem; POSIX locks are off by default",
    "ncpfs": "NetWare: a network filesystem",
    "davfs": "WebDAV: a network filesystem without byte-range locks",
}
# FUSE filesystems hand locks to their daemon; these are known to be remote.
NETWORK_FUSE = ("sshfs", "s3fs", "gcsfuse", "rclone", "glusterfs", "grpcfuse", "osxfs", "davfs")


def network_filesystem_reason(fstype: str) -> str | None:
    """Why SQLite locking is unreliable on this filesystem type, or None if it is local."""
    if fstype in NETWORK_FILESYSTEMS:
        return NETWORK_FILESYSTEMS[fstype]
    if fstype.startswith("fuse."):
        subtype = fstype.removeprefix("fuse.")
        if any(subtype.startswith(name) for name in NETWORK_FUSE):
            return f"FUSE {subtype}: a remote filesystem; locks are not seen by other hosts"
    return None


def is_network_filesystem(fstype: str) -> bool:
    return network_filesystem_reason(fstype) is not None


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fstype: str
    source: str
    options: str


def _unescape(field_text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field_text):
        chunk = field_text[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """/proc/self/mountinfo lines: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE
    SOURCE SUPEROPTS (proc(5)). Malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        parts = line.split(" ")
        if "-" not in parts or len(parts) < 7:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        entries.append(
            MountEntry(
                mount_point=_unescape(parts[4]),
                fstype=parts[sep + 1],
                source=_unescape(parts[sep + 2]),
                options=parts[5],
            )
        )
    return entries


def mount_for(path: str, entries: list[MountEntry]) -> MountEntry | None:
    """The mount holding `path` (an absolute real path): the longest matching mount point; on
    ties the last one listed, since later mounts are stacked on top of earlier ones."""
    best: MountEntry | None = None
    for entry in entries:
        mp = entry.mount_point
        inside = path == mp or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = entry
    return best


@dataclass(frozen=True)
class Filesystem:
    """The filesystem the database is on; fstype "unknown" where mountinfo is not available."""

    fstype: str
    mount_point: str | None
    source: str | None
    network_reason: str | None

    @property
    def is_network(self) -> bool:
        return self.network_reason is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.fstype,
            "mount_point": self.mount_point,
            "source": self.source,
            "network": self.is_network,
            "network_reason": self.network_reason,
        }


def filesystem_of(path: str, mountinfo_path: str = "/proc/self/mountinfo") -> Filesystem:
    try:
        with open(mountinfo_path, encoding="utf-8", errors="surrogateescape") as handle:
            entries = parse_mountinfo(handle.read())
    except OSError:
        return Filesystem("unknown", None, None, None)
    entry = mount_for(os.path.realpath(path), entries)
    if entry is None:
        return Filesystem("unknown", None, None, None)
    reason = network_filesystem_reason(entry.fstype)
    return Filesystem(entry.fstype, entry.mount_point, entry.source, reason)
