"""Which filesystem a database lives on, and whether SQLite's locking can be trusted there.
Standard library only: run, trace and inspect all warn about network filesystems with it
(`filesystem_warning(path)` gives the finding; `filesystem_event(path)` records the fact).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.findings import Advice, Finding

MOUNTINFO = "/proc/self/mountinfo"
NETWORK_FILESYSTEM = "network-filesystem"

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


def filesystem_of(path: str, mountinfo_path: str = MOUNTINFO) -> Filesystem:
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


def database_filesystem(db_path: str, mountinfo_path: str = MOUNTINFO) -> Filesystem:
    """The filesystem of a database file, or of its directory while the file does not exist
    yet: SQLite creates the -wal, -shm and -journal next to it. A network one wins when the
    file and its directory differ (a file bind-mounted into a local directory)."""
    directory = os.path.dirname(os.path.abspath(db_path)) or "/"
    candidates = [directory]
    if os.path.exists(db_path):
        candidates.insert(0, db_path)
    found = [filesystem_of(path, mountinfo_path) for path in candidates]
    return next((fs for fs in found if fs.is_network), found[0])


def network_filesystem_finding(db_path: str, fs: Filesystem, wal: bool = False) -> Finding | None:
    """The `network-filesystem` warning for a database on `fs`, or None when `fs` is local."""
    if not fs.is_network:
        return None
    evidence = [f"{db_path} is on {fs.fstype} mounted at {fs.mount_point}: {fs.network_reason}"]
    if wal:
        evidence.append(
            "the database is in WAL mode, whose -shm shared memory only works for processes on "
            "one host (wal.html: WAL does not work over a network filesystem)"
        )
    return Finding(
        pattern=NETWORK_FILESYSTEM,
        title=f"The database is on a network filesystem ({fs.fstype})",
        severity="warning",
        confidence="high",
        explanation=(
            "SQLite's locking relies on POSIX advisory locks that every process using the file "
            "sees. On network filesystems locks may be emulated, dropped or not shared between "
            "machines: the result is 'database is locked' with no visible holder, or corruption."
        ),
        evidence=tuple(evidence),
        advice=(
            Advice(
                "Keep the database on a local filesystem (a Docker named volume rather than a "
                "bind mount from the host; a local disk rather than NFS or SMB)."
            ),
            Advice(
                "If several machines need the data, let one process on one machine own the "
                "database and serve the others, or use a client/server database."
            ),
        ),
        facts={"fstype": fs.fstype, "mount_point": fs.mount_point, "source": fs.source},
    )


def filesystem_warning(
    db_path: str, wal: bool = False, mountinfo_path: str = MOUNTINFO
) -> Finding | None:
    """The network-filesystem finding for a database path, or None on a local filesystem."""
    return network_filesystem_finding(db_path, database_filesystem(db_path, mountinfo_path), wal)


def filesystem_event(db_path: str, mountinfo_path: str = MOUNTINFO) -> tuple[Any, ...]:
    """A "filesystem" event (events.py) recording where the database lives."""
    fs = database_filesystem(db_path, mountinfo_path)
    return (
        "filesystem",
        time.monotonic_ns(),
        os.path.abspath(db_path),
        fs.fstype,
        fs.mount_point,
        fs.source,
        fs.network_reason,
    )
