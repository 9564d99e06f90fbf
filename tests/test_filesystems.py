"""Network filesystem warnings: recorded /proc/self/mountinfo lines for the positives, this
machine's real local filesystems for the negatives, and the warning in a real run."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.sources.inspect import filesystems
from sqlite_lockprobe.sources.inspect.filesystems import database_filesystem, filesystem_warning
from sqlite_lockprobe.sources.run import runner
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import load_scenario

# Recorded from real machines: an NFS home, an SMB share with nobrl, a WSL2 Windows drive, an
# sshfs mount, Docker Desktop's virtiofs bind mount, and local ones around them.
MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
40 22 0:50 / /home rw,relatime shared:9 - nfs4 fileserver:/export/home rw,vers=4.2,sec=sys
41 22 0:51 / /mnt/share rw,relatime - cifs //nas/share rw,vers=3.0,nobrl
42 22 0:52 / /mnt/c rw,noatime - 9p drvfs rw,dirsync,aname=drvfs;path=C:\\;uid=1000
43 22 0:53 / /srv/remote rw,nosuid,nodev - fuse.sshfs deploy@host:/var/app rw,user_id=1000
44 22 0:54 / /app rw,relatime - virtiofs mount0 rw
45 40 254:1 / /home/me/local rw - ext4 /dev/vdb rw
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return str(path)


@pytest.mark.parametrize(
    ("db", "fstype", "mount_point"),
    [
        ("/home/me/app.db", "nfs4", "/home"),
        ("/mnt/share/data/app.db", "cifs", "/mnt/share"),
        ("/mnt/c/Users/me/app.db", "9p", "/mnt/c"),
        ("/srv/remote/app.db", "fuse.sshfs", "/srv/remote"),
        ("/app/db.sqlite3", "virtiofs", "/app"),
    ],
)
def test_database_on_a_network_filesystem_is_named_with_type_and_mount_point(
    mountinfo, db, fstype, mount_point
) -> None:
    finding = filesystem_warning(db, mountinfo_path=mountinfo)
    assert finding is not None and finding.pattern == "network-filesystem"
    assert finding.severity == "warning"
    assert finding.facts["fstype"] == fstype and finding.facts["mount_point"] == mount_point
    assert f"on {fstype} mounted at {mount_point}" in finding.evidence[0]


@pytest.mark.parametrize("db", ["/var/lib/app.db", "/tmp/app.db", "/home/me/local/app.db"])
def test_local_filesystems_in_recorded_mountinfo_give_no_warning(mountinfo, db) -> None:
    assert filesystem_warning(db, mountinfo_path=mountinfo) is None


def test_wal_mode_adds_the_shared_memory_sentence(mountinfo) -> None:
    finding = filesystem_warning("/home/me/app.db", wal=True, mountinfo_path=mountinfo)
    assert finding is not None and "-shm shared memory" in finding.evidence[1]


def test_real_local_filesystems_of_this_machine_are_not_network(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    assert database_filesystem(str(db)).fstype not in ("unknown", "nfs", "nfs4", "cifs")
    assert filesystem_warning(str(db)) is None
    assert filesystem_warning(str(tmp_path / "not-yet-created.db")) is None
    shm = Path("/dev/shm")
    if shm.is_dir():
        assert database_filesystem(str(shm / "app.db")).fstype == "tmpfs"
        assert filesystem_warning(str(shm / "app.db")) is None


def test_run_warns_when_its_database_is_on_a_network_filesystem(
    tmp_path: Path, monkeypatch
) -> None:
    """Everything under / is NFS in this recorded table: the run's database is on it."""
    nfs_root = tmp_path / "mountinfo"
    nfs_root.write_text("22 1 0:50 / / rw,relatime - nfs4 fileserver:/export rw,vers=4.2\n")
    event = functools.partial(filesystems.filesystem_event, mountinfo_path=str(nfs_root))
    monkeypatch.setattr(runner, "filesystem_event", event)
    result = run_scenario(load_scenario("healthy"))
    analysis = analyze(result.events)
    assert analysis.pattern_ids == ["network-filesystem"]
    [finding] = analysis.findings
    assert finding.facts == {"fstype": "nfs4", "mount_point": "/", "source": "fileserver:/export"}
    assert result.db_path in finding.evidence[0]


def test_run_on_a_local_filesystem_records_it_and_stays_healthy() -> None:
    result = run_scenario(load_scenario("healthy"))
    [recorded] = [e for e in result.events if e["k"] == "filesystem"]
    assert recorded["db"] == result.db_path and recorded["network_reason"] is None
    assert analyze(result.events).findings == []


def test_run_with_db_on_a_network_share_warns_about_that_file_not_its_local_copy(
    tmp_path: Path, monkeypatch, db
) -> None:
    """--db on an existing database runs on a local copy; the warning names the user's file."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        f"40 22 0:50 / {tmp_path} rw,relatime - cifs //nas/share rw,nobrl\n"
    )
    event = functools.partial(filesystems.filesystem_event, mountinfo_path=str(table))
    monkeypatch.setattr(runner, "filesystem_event", event)
    result = run_scenario(load_scenario("healthy"), db=db)
    assert result.db_path != str(db)
    [finding] = analyze(result.events).findings
    assert finding.facts["fstype"] == "cifs" and str(db) in finding.evidence[0]
