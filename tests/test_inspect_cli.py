"""`lockprobe inspect` end to end: output, JSON, bad input, read-only, findings and --watch."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sqlite_lockprobe.cli import cli
from sqlite_lockprobe.report.inspect_terminal import journal_rows
from sqlite_lockprobe.sources.inspect.inspection import inspect_database, inspection_findings
from sqlite_lockprobe.sources.inspect.oslocks import Filesystem, network_filesystem_reason
from sqlite_lockprobe.sources.inspect.watch import lock_changes
from tests.conftest import make_db, snapshot


def run(*args: str):
    return CliRunner().invoke(cli, ["inspect", *args])


def lockprobe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "inspect", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def test_terminal_report_names_the_holder_and_its_lock(rollback_db, holder):
    writer = holder(rollback_db, "exclusive")
    result = run(str(rollback_db))
    assert result.exit_code == 0, result.output
    assert str(writer.pid) in result.stdout
    assert "EXCLUSIVE" in result.stdout
    [(_, journal)] = journal_rows(inspect_database(rollback_db))
    assert "in use by the transaction that holds RESERVED or more" in journal
    assert "4096 bytes" in result.stdout
    assert "Cannot be seen from outside" in result.stdout


def test_json_to_stdout_has_the_envelope_and_every_section(rollback_db, holder):
    writer = holder(rollback_db, "reserved")
    result = run(str(rollback_db), "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and doc["command"] == "inspect"
    for key in ("database", "wal", "shm", "journal", "filesystem", "holders", "cannot_see"):
        assert key in doc
    assert doc["database"]["header"]["page_size"] == 4096
    assert doc["findings"] == []
    [entry] = doc["holders"]
    assert entry["pid"] == writer.pid
    assert [lock["name"] for lock in entry["locks"]] == ["RESERVED"]
    assert entry["process"]["pid"] == writer.pid


def test_json_to_a_file_is_written_and_the_report_still_printed(rollback_db, tmp_path):
    out = tmp_path / "report.json"
    result = run(str(rollback_db), "--json", str(out))
    assert result.exit_code == 0
    assert json.loads(out.read_text())["database"]["journal_mode"] == "rollback"
    assert "Lock table" in result.stdout or "No process" in result.stdout


def test_empty_file_is_an_empty_database_not_an_error(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    result = run(str(empty), "--json", "-")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["database"]["journal_mode"] == "empty"


# ---- bad input ------------------------------------------------------------------------------


def _valid_bytes(tmp_path: Path) -> bytes:
    return make_db(tmp_path / "valid.db").read_bytes()


def _bad_input(tmp_path: Path, case: str) -> Path:
    target = tmp_path / f"{case}.db"
    if case == "missing":
        return target
    if case == "directory":
        target.mkdir()
    elif case == "fifo":
        os.mkfifo(target)
    elif case == "not-sqlite":
        target.write_text("name,email\nann,ann@example.com\n")
    elif case == "truncated":
        target.write_bytes(_valid_bytes(tmp_path)[:60])
    elif case == "corrupt":
        data = bytearray(_valid_bytes(tmp_path))
        data[16:18] = b"\x03\x00"  # page size 768: not a power of two
        target.write_bytes(bytes(data))
    return target


BAD_INPUT = [
    ("missing", 3, "no such file"),
    ("directory", 4, "is a directory"),
    ("fifo", 4, "not a regular file"),
    ("not-sqlite", 6, "not a SQLite database"),
    ("truncated", 7, "truncated SQLite header"),
    ("corrupt", 7, "corrupt SQLite header (page size 768)"),
]


@pytest.mark.parametrize(("case", "code", "message"), BAD_INPUT)
def test_bad_input_gives_one_line_and_its_exit_code(tmp_path, case, code, message):
    path = _bad_input(tmp_path, case)
    result = run(str(path))
    assert result.exit_code == code
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("lockprobe: ") and message in result.stderr


@pytest.mark.parametrize(("case", "code", "message"), BAD_INPUT)
def test_bad_input_from_the_real_command_has_no_traceback(tmp_path, case, code, message):
    proc = lockprobe(str(_bad_input(tmp_path, case)))
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def _unreadable(tmp_path: Path) -> Path:
    target = tmp_path / "secret.db"
    target.write_bytes(_valid_bytes(tmp_path))
    target.chmod(0)
    return target


def test_unreadable_file_is_a_permission_error(tmp_path):
    command = [sys.executable, "-m", "sqlite_lockprobe", "inspect", str(_unreadable(tmp_path))]
    if os.geteuid() == 0:
        # Root reads any file: drop the capabilities that bypass file permissions first.
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr == f"lockprobe: {tmp_path / 'secret.db'}: permission denied\n"


def test_watch_and_json_together_is_a_usage_error(rollback_db):
    result = run(str(rollback_db), "--watch", "--json", "-")
    assert result.exit_code == 2 and "cannot be combined" in result.stderr


# ---- read-only ------------------------------------------------------------------------------


def test_inspect_creates_no_wal_shm_or_journal(rollback_db):
    before = snapshot(rollback_db.parent)
    assert run(str(rollback_db)).exit_code == 0
    assert run(str(rollback_db), "--json", "-").exit_code == 0
    assert snapshot(rollback_db.parent) == before
    assert sorted(before) == ["app.db"]


@pytest.mark.parametrize(
    ("wal", "modes"),
    [(False, ["shared"]), (False, ["reserved"]), (True, ["wal-reader", "wal-writer"])],
)
def test_inspect_leaves_bytes_and_mtimes_alone_while_locks_are_held(tmp_path, holder, wal, modes):
    db = make_db(tmp_path / "app.db", wal=wal)
    for mode in modes:
        holder(db, mode)
    before = snapshot(tmp_path)
    for _ in range(3):
        assert run(str(db)).exit_code == 0
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("wal", [False, True], ids=["rollback", "wal"])
def test_inspect_never_makes_a_busy_writer_wait(tmp_path, holder, wal):
    """The writer commits in a loop with busy_timeout 0: any lock inspect took would make one
    of its commits fail with SQLITE_BUSY at once."""
    db = make_db(tmp_path / "app.db", wal=wal)
    writer = holder(db, "writer-loop")
    first = inspect_database(db)
    for _ in range(25):
        result = run(str(db), "--json", "-")
        assert result.exit_code == 0, result.output
    last = inspect_database(db)
    if wal:
        assert first.shm and first.shm.header and last.shm and last.shm.header
        assert last.shm.header.first.change != first.shm.header.first.change
    else:
        assert first.database.header and last.database.header
        assert last.database.header.change_counter > first.database.header.change_counter
    report = writer.stop().split()
    counts = dict(item.split("=") for item in report)
    assert int(counts["commits"]) > 0 and counts["busy"] == "0", report


# ---- findings -------------------------------------------------------------------------------


def test_healthy_wal_database_has_no_findings(wal_db, holder):
    holder(wal_db, "wal-idle")
    holder(wal_db, "wal-reader")
    assert inspection_findings(inspect_database(wal_db)) == []


def test_reader_and_writer_processes_on_a_rollback_database(rollback_db, holder):
    reader = holder(rollback_db, "shared")
    writer = holder(rollback_db, "reserved")
    [finding] = inspection_findings(inspect_database(rollback_db))
    assert finding.pattern == "rollback-journal-contention"
    assert finding.severity == "warning"
    assert sorted(finding.facts["pids"]) == sorted([reader.pid, writer.pid])


def test_one_process_on_a_rollback_database_is_not_contention(rollback_db, holder):
    holder(rollback_db, "reserved")
    assert inspection_findings(inspect_database(rollback_db)) == []


def test_readers_pinning_a_growing_wal_is_large_wal(wal_db, holder):
    reader = holder(wal_db, "wal-reader")
    conn = sqlite3.connect(wal_db)
    for _ in range(5):  # ~5000 new pages while the reader's snapshot pins the WAL
        conn.executemany("INSERT INTO t(x) VALUES (randomblob(3000))", [()] * 1000)
        conn.commit()
    conn.close()  # cannot checkpoint the WAL away: the reader still has the database open
    ins = inspect_database(wal_db)
    [finding] = inspection_findings(ins)
    assert finding.pattern == "large-wal"
    assert (finding.severity, finding.confidence) == ("warning", "medium")
    assert finding.facts["pinning_pids"] == [reader.pid]
    assert finding.facts["frames_not_checkpointed"] > 4000


def test_a_wal_file_left_large_after_checkpointing_is_only_info(wal_db, holder):
    holder(wal_db, "wal-idle")  # keeps the WAL file from being deleted at the last close
    reader = holder(wal_db, "wal-reader")
    conn = sqlite3.connect(wal_db)
    for _ in range(5):
        conn.executemany("INSERT INTO t(x) VALUES (randomblob(3000))", [()] * 1000)
        conn.commit()
    reader.stop()
    busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    conn.close()
    assert busy == 0 and log == done > 4000
    ins = inspect_database(wal_db)
    assert ins.shm and ins.shm.header and ins.shm.header.frames_not_checkpointed == 0
    [finding] = inspection_findings(ins)
    assert finding.pattern == "large-wal"
    assert (finding.severity, finding.confidence) == ("info", "low")


def test_symlinked_path_finds_the_files_beside_the_real_database(rollback_db, holder, tmp_path):
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    link = link_dir / "current.db"
    link.symlink_to(rollback_db)
    writer = holder(rollback_db, "exclusive")
    ins = inspect_database(link)
    assert ins.database.path == str(link)
    assert ins.journal is not None and ins.journal.in_use
    h = ins.holder(writer.pid)
    assert h is not None and h.lock_names == ("EXCLUSIVE",) and "journal" in h.open_files


def test_database_on_a_network_filesystem_is_reported(rollback_db):
    ins = inspect_database(rollback_db)
    nfs = Filesystem("nfs4", "/mnt/nfs", "server:/export", network_filesystem_reason("nfs4"))
    [finding] = inspection_findings(dataclasses.replace(ins, filesystem=nfs))
    assert finding.pattern == "network-filesystem" and finding.confidence == "high"
    assert inspection_findings(ins) == []  # tmp_path is local


# ---- --watch ----------------------------------------------------------------------------------


def test_lock_changes_between_two_inspections(rollback_db, holder):
    idle = inspect_database(rollback_db)
    writer = holder(rollback_db, "reserved")
    busy = inspect_database(rollback_db)
    [gained] = lock_changes(idle, busy)
    assert (gained.pid, gained.lock, gained.change) == (writer.pid, "RESERVED", "gained")
    [released] = lock_changes(busy, idle)
    assert (released.pid, released.lock, released.change) == (writer.pid, "RESERVED", "released")
    assert lock_changes(busy, busy) == []
    assert [c.change for c in lock_changes(None, busy)] == ["gained"]


def test_watch_logs_lock_changes_and_exits_0_on_ctrl_c(rollback_db, holder):
    watcher = subprocess.Popen(
        [sys.executable, "-m", "sqlite_lockprobe", "inspect", str(rollback_db), "--watch", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        writer = holder(rollback_db, "reserved")
        assert _wait_for_line(watcher, f"pid {writer.pid}", "gained RESERVED")
        writer.stop()
        assert _wait_for_line(watcher, f"pid {writer.pid}", "released RESERVED")
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate()
        assert watcher.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def _wait_for_line(proc: subprocess.Popen[str], *parts: str) -> str:
    """Read lines until one contains all `parts`; fails if the watcher exits first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if all(part in line for part in parts):
            return line
    raise AssertionError(f"watcher ended without a line containing {parts}")
