"""The OS lock table decoded into SQLite's locks, checked against real processes holding them."""

from __future__ import annotations

import getpass
import os
import sqlite3
from pathlib import Path

import pytest

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.inspect import oslocks
from sqlite_lockprobe.sources.inspect.inspection import EXIT_OWN_LOCKS, inspect_database
from sqlite_lockprobe.sources.inspect.oslocks import (
    PENDING_BYTE,
    RESERVED_BYTE,
    RangeLock,
    decode_db_locks,
    decode_shm_locks,
    filesystem_of,
    mount_for,
    parse_mountinfo,
    parse_proc_locks,
    probe_locks,
)


def held(db: Path, pid: int) -> tuple[str, ...]:
    holder = inspect_database(db).holder(pid)
    assert holder is not None, f"pid {pid} not in the lock table"
    return holder.lock_names


def test_reader_in_rollback_mode_holds_shared(rollback_db, holder):
    reader = holder(rollback_db, "shared")
    ins = inspect_database(rollback_db)
    h = ins.holder(reader.pid)
    assert h is not None and h.lock_names == ("SHARED",)
    assert "reading" in h.headline
    assert "db" in h.open_files


def test_immediate_transaction_holds_reserved(rollback_db, holder):
    writer = holder(rollback_db, "reserved")
    h = inspect_database(rollback_db).holder(writer.pid)
    assert h is not None and h.lock_names == ("RESERVED",)
    assert h.headline == "holds RESERVED: it is writing; other writers wait, readers continue"


def test_commit_blocked_by_reader_leaves_pending(rollback_db, holder):
    reader = holder(rollback_db, "shared")
    committer = holder(rollback_db, "pending")
    assert held(rollback_db, committer.pid) == ("PENDING",)
    assert held(rollback_db, reader.pid) == ("SHARED",)
    h = inspect_database(rollback_db).holder(committer.pid)
    assert h is not None and "waiting for readers to finish so it can commit" in h.headline


def test_exclusive_transaction_holds_exclusive(rollback_db, holder):
    writer = holder(rollback_db, "exclusive")
    assert held(rollback_db, writer.pid) == ("EXCLUSIVE",)


def test_wal_writer_holds_the_wal_write_lock(wal_db, holder):
    writer = holder(wal_db, "wal-writer")
    h = inspect_database(wal_db).holder(writer.pid)
    assert h is not None
    assert h.lock_names[0] == "WAL_WRITE_LOCK"
    assert {"SHARED", "DMS"} <= set(h.lock_names)
    assert h.headline.startswith("holds the WAL write lock: it is writing")


def test_wal_reader_holds_a_read_mark_at_its_snapshot(wal_db, holder):
    reader = holder(wal_db, "wal-reader")
    ins = inspect_database(wal_db)
    h = ins.holder(reader.pid)
    assert h is not None
    marks = [lock for lock in h.locks if lock.read_mark is not None]
    assert len(marks) == 1 and marks[0].kind == "read" and marks[0].read_mark >= 1
    assert ins.shm is not None and ins.shm.header is not None
    frame = ins.shm.header.read_marks[marks[0].read_mark]
    assert frame is not None and frame >= 1
    assert f"read mark {marks[0].read_mark} = frame {frame}" in h.headline


def test_idle_wal_connection_holds_shared_and_dms_only(wal_db, holder):
    idle = holder(wal_db, "wal-idle")
    assert set(held(wal_db, idle.pid)) == {"SHARED", "DMS"}


def test_holder_process_details_come_from_psutil(rollback_db, holder):
    writer = holder(rollback_db, "reserved")
    ins = inspect_database(rollback_db)
    h = ins.holder(writer.pid)
    assert h is not None and h.process is not None
    assert h.process.name is not None and h.process.name.startswith("python")
    assert h.process.cmdline is not None and any("holder.py" in a for a in h.process.cmdline)
    assert h.process.user == getpass.getuser()
    age = h.process.age_seconds(ins.taken_at)
    assert age is not None and age >= 0


def test_release_removes_the_holder(rollback_db, holder):
    writer = holder(rollback_db, "reserved")
    assert inspect_database(rollback_db).holder(writer.pid) is not None
    writer.stop()
    assert inspect_database(rollback_db).holder(writer.pid) is None


def test_fgetlk_probe_names_the_reserved_holder(rollback_db, holder):
    writer = holder(rollback_db, "reserved")
    fd = os.open(rollback_db, os.O_RDONLY)
    try:
        found = probe_locks(fd, "db", [(PENDING_BYTE, 1), (RESERVED_BYTE, 1)])
    finally:
        os.close(fd)
    assert [(lk.pid, lk.kind) for lk in found] == [(writer.pid, "write")]
    assert [lk.name for lk in decode_db_locks(found)] == ["RESERVED"]


def test_lock_table_falls_back_to_fgetlk_without_proc_locks(wal_db, holder, tmp_path):
    writer = holder(wal_db, "wal-writer")
    shm = Path(f"{wal_db}-shm")
    table = oslocks.read_lock_table(
        str(wal_db), os.stat(wal_db), str(shm), os.stat(shm), proc_locks=str(tmp_path / "none")
    )
    assert table.source == "fcntl F_GETLK"
    shm_locks = decode_shm_locks(lk for lk in table.locks if lk.file == "shm")
    assert "WAL_WRITE_LOCK" in [lk.name for lk in shm_locks]
    assert {lk.pid for lk in table.locks} == {writer.pid}


def test_inspect_refuses_in_a_process_holding_locks_and_keeps_them(wal_db):
    conn = sqlite3.connect(wal_db)
    conn.execute("SELECT count(*) FROM t").fetchall()  # WAL: SHARED + DMS for the connection
    try:
        with pytest.raises(LockprobeError) as info:
            inspect_database(wal_db)
        assert info.value.exit_code == EXIT_OWN_LOCKS
        with open("/proc/locks") as proc:
            mine = [ln for ln in parse_proc_locks(proc.read()) if ln.pid == os.getpid()]
        assert mine, "the connection's locks must survive the refused inspection"
    finally:
        conn.close()


# ---- recorded /proc/locks text ---------------------------------------------------------------

RECORDED_LOCKS = """\
1: POSIX  ADVISORY  WRITE 3868 fe:00:2146898 1073741824 1073741825
2: POSIX  ADVISORY  READ 3868 fe:00:2146898 1073741826 1073742335
2: -> POSIX  ADVISORY  WRITE 4000 fe:00:2146898 1073741826 1073742335
3: OFDLCK ADVISORY  WRITE -1 fe:00:77 0 EOF
4: FLOCK  ADVISORY  WRITE 12 00:2a:99 0 EOF
5: POSIX  ADVISORY  READ 4515 fe:00:2146530 123 123
6: garbage line
"""


def test_proc_locks_parser_skips_waiters_and_garbage():
    lines = parse_proc_locks(RECORDED_LOCKS)
    assert [(ln.pid, ln.kind, ln.start, ln.end) for ln in lines] == [
        (3868, "write", 1073741824, 1073741825),
        (3868, "read", 1073741826, 1073742335),
        (None, "write", 0, None),
        (12, "write", 0, None),
        (4515, "read", 123, 123),
    ]
    assert (lines[0].major, lines[0].minor, lines[0].inode) == (0xFE, 0, 2146898)
    assert lines[3].flavour == "FLOCK"


def test_merged_ranges_decode_to_the_highest_level():
    def db(kind: str, start: int, end: int) -> RangeLock:
        return RangeLock("db", 1, kind, start, end)

    pending = [db("write", 0x40000000, 0x40000001), db("read", 0x40000002, 0x400001FF)]
    assert [lk.name for lk in decode_db_locks(pending)] == ["PENDING"]
    exclusive = [db("write", 0x40000000, 0x400001FF)]
    assert [lk.name for lk in decode_db_locks(exclusive)] == ["EXCLUSIVE"]
    reserved = [db("write", 0x40000001, 0x40000001), db("read", 0x40000002, 0x400001FF)]
    assert [lk.name for lk in decode_db_locks(reserved)] == ["RESERVED"]
    assert [lk.name for lk in decode_db_locks([db("read", 0x40000002, 0x400001FF)])] == ["SHARED"]
    assert decode_db_locks([]) == []


def test_merged_shm_range_decodes_to_each_slot():
    locks = [RangeLock("shm", 1, "read", 127, 128), RangeLock("shm", 1, "write", 120, 121)]
    names = [lk.name for lk in decode_shm_locks(locks)]
    assert names == ["WAL_WRITE_LOCK", "WAL_CKPT_LOCK", "WAL_READ_LOCK(4)", "DMS"]


# ---- mountinfo --------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
40 22 0:50 / /mnt/nfs rw,relatime shared:9 - nfs4 server:/export rw,vers=4.2
41 22 0:51 / /mnt/smb rw,relatime - cifs //host/share rw,nobrl
42 22 0:52 / /mnt/c rw,noatime - 9p drvfs rw,aname=drvfs
43 22 0:53 / /home/me/remote\\040dir rw,nosuid - fuse.sshfs me@host:/srv rw
44 40 0:54 / /mnt/nfs/local rw - ext4 /dev/vdb rw
45 22 0:55 / /mnt/gocrypt rw - fuse.gocryptfs /secret rw
"""


@pytest.mark.parametrize(
    ("path", "fstype", "network"),
    [
        ("/var/lib/app.db", "ext4", False),
        ("/tmp/app.db", "tmpfs", False),
        ("/mnt/nfs/app.db", "nfs4", True),
        ("/mnt/nfs/local/app.db", "ext4", False),
        ("/mnt/smb/app.db", "cifs", True),
        ("/mnt/c/Users/app.db", "9p", True),
        ("/home/me/remote dir/app.db", "fuse.sshfs", True),
        ("/mnt/gocrypt/app.db", "fuse.gocryptfs", False),
        ("/mnt/nfsx/app.db", "ext4", False),
    ],
)
def test_mountinfo_longest_mount_point_decides(path, fstype, network):
    entry = mount_for(path, parse_mountinfo(MOUNTINFO))
    assert entry is not None and entry.fstype == fstype
    assert oslocks.is_network_filesystem(entry.fstype) is network


def test_mountinfo_unescapes_spaces():
    entries = parse_mountinfo(MOUNTINFO)
    assert "/home/me/remote dir" in [e.mount_point for e in entries]


def test_filesystem_of_a_real_file_reads_this_machines_mountinfo(rollback_db):
    fs = filesystem_of(str(rollback_db))
    assert fs.fstype != "unknown" and fs.mount_point is not None
    assert str(rollback_db).startswith(fs.mount_point)
