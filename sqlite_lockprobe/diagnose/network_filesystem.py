"""network-filesystem: the database lives where SQLite's POSIX locks cannot be trusted.

Not a wait pattern: `run` and `trace` record the filesystem of the database when they start
(a "filesystem" event), and this turns a network one (NFS, SMB/CIFS, 9p, virtiofs, remote
FUSE...) into the same warning `inspect` gives (filesystems.network_filesystem_finding).
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.sources.inspect.filesystems import Filesystem, network_filesystem_finding

PATTERN = pattern_of(__name__)


def detect(timeline: Timeline) -> list[Finding]:
    """One warning per database file on a network filesystem."""
    findings = []
    for recorded in timeline.filesystems:
        fs = Filesystem(
            recorded.fstype, recorded.mount_point, recorded.source, recorded.network_reason
        )
        finding = network_filesystem_finding(recorded.db, fs, wal=timeline.is_wal)
        if finding is not None:
            findings.append(finding)
    return findings
