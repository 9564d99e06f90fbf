"""Header parsers, checked against files real SQLite wrote, and fuzzed."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.inspect import dbfile
from sqlite_lockprobe.sources.inspect.dbfile import (
    EXIT_CORRUPT_HEADER,
    EXIT_NOT_SQLITE,
    parse_database_header,
    parse_journal_header,
    parse_shm_header,
    parse_wal_header,
)
from sqlite_lockprobe.sources.inspect.inspection import inspect_database, inspection_findings
from tests.conftest import make_db


def header_of(path: Path) -> dbfile.DatabaseHeader:
    return parse_database_header(path.read_bytes()[:100])


def pragma(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def test_header_fields_match_what_sqlite_reports(tmp_path):
    db = make_db(tmp_path / "a.db")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 42")
    conn.execute("PRAGMA application_id = 1234567")
    conn.execute("DELETE FROM t WHERE id > 5")
    conn.commit()
    conn.close()
    h = header_of(db)
    assert h.page_size == pragma(db, "page_size")
    assert h.page_count(db.stat().st_size) == pragma(db, "page_count")
    assert h.freelist_pages == pragma(db, "freelist_count")
    assert (h.user_version, h.application_id) == (42, 1234567)
    assert h.schema_format == 4 and h.text_encoding_name == "UTF-8"
    assert h.journal_mode == "rollback" and (h.write_version, h.read_version) == (1, 1)
    assert h.sqlite_version == sqlite3.sqlite_version
    assert h.header_page_count_valid


def test_page_size_65536_is_stored_as_1(tmp_path):
    db = tmp_path / "big.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA page_size = 65536")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    assert db.read_bytes()[16:18] == b"\x00\x01"
    assert header_of(db).page_size == 65536


def test_wal_mode_and_utf16_are_recorded(tmp_path):
    db = tmp_path / "w.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA encoding = 'UTF-16le'")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    h = header_of(db)
    assert h.journal_mode == "wal" and (h.write_version, h.read_version) == (2, 2)
    assert h.text_encoding_name == "UTF-16le"


def test_page_count_ignores_an_invalid_in_header_size(tmp_path):
    data = bytearray(make_db(tmp_path / "a.db").read_bytes())
    data[92:96] = (int.from_bytes(data[24:28], "big") + 1).to_bytes(4, "big")  # stale marker
    h = parse_database_header(bytes(data[:100]))
    assert not h.header_page_count_valid
    data[28:32] = (999).to_bytes(4, "big")
    assert parse_database_header(bytes(data[:100])).page_count(len(data)) == len(data) // 4096


def test_wal_and_shm_headers_of_a_live_wal_database(wal_db, holder):
    holder(wal_db, "wal-reader")  # keeps the WAL from being checkpointed away at close
    ins = inspect_database(wal_db)
    assert ins.wal is not None and ins.wal.header is not None
    assert ins.wal.header.page_size == 4096 and ins.wal.header.format_version == 3007000
    assert ins.wal.frames_in_file == (ins.wal.size_bytes - 32) // (4096 + 24)
    assert ins.shm is not None and ins.shm.header is not None
    shm = ins.shm.header
    assert shm.valid and shm.first.checksum_ok and shm.copies_match
    assert shm.first.max_frame >= 1 and shm.first.page_size == 4096
    assert shm.read_marks[0] == 0
    assert shm.first.salt == ins.wal.header.salt


def test_killed_writer_leaves_a_hot_journal_that_sqlite_rolls_back(tmp_path, holder):
    rollback_db = make_db(tmp_path / "app.db", rows=3000)
    conn = sqlite3.connect(rollback_db)
    before = conn.execute("SELECT x FROM t ORDER BY id").fetchall()
    conn.close()
    writer = holder(rollback_db, "crash")
    live = inspect_database(rollback_db)
    assert live.journal is not None and live.journal.in_use and not live.journal.hot
    writer.stop()  # it dies with os._exit in the middle of the transaction
    ins = inspect_database(rollback_db)
    assert ins.journal is not None and ins.journal.hot and ins.journal.header.magic_ok
    assert not ins.journal.in_use
    assert [f.pattern for f in inspection_findings(ins)] == ["hot-journal"]
    conn = sqlite3.connect(rollback_db)  # SQLite agrees: it rolls the journal back
    assert conn.execute("SELECT x FROM t ORDER BY id").fetchall() == before
    conn.close()
    assert not Path(f"{rollback_db}-journal").exists()


def test_persist_journal_with_zeroed_header_is_not_hot(tmp_path):
    db = tmp_path / "p.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = PERSIST")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    ins = inspect_database(db)
    assert ins.journal is not None and ins.journal.size_bytes > 0
    assert ins.journal.header.zeroed and not ins.journal.hot
    assert inspection_findings(ins) == []


def test_hot_journal_rule_of_pager_c():
    written = parse_journal_header(dbfile.JOURNAL_MAGIC + bytes(20))
    zeroed = parse_journal_header(bytes(28))
    assert dbfile.journal_is_hot(written, reserved_lock_held=False, database_pages=2)
    assert not dbfile.journal_is_hot(written, reserved_lock_held=True, database_pages=2)
    assert not dbfile.journal_is_hot(written, reserved_lock_held=False, database_pages=0)
    assert not dbfile.journal_is_hot(zeroed, reserved_lock_held=False, database_pages=2)
    assert not dbfile.journal_is_hot(parse_journal_header(b""), False, 2)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", EXIT_NOT_SQLITE),
        (b"PK\x03\x04 a zip file", EXIT_NOT_SQLITE),
        (b"SQLite format 3\x00\x10\x00", EXIT_CORRUPT_HEADER),
        (b"SQLite", EXIT_CORRUPT_HEADER),
    ],
)
def test_bad_headers_raise_lockprobe_error(data, code):
    with pytest.raises(LockprobeError) as info:
        parse_database_header(data)
    assert info.value.exit_code == code


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (16, b"\x03\x00", "page size"),
        (21, b"\x41", "payload"),
        (16, b"\x02\x00\x01\x01\xff", "reserved"),
    ],
)
def test_values_sqlite_rejects_are_corrupt(tmp_path, offset, value, reason):
    data = bytearray(make_db(tmp_path / "a.db").read_bytes()[:100])
    data[offset : offset + len(value)] = value
    with pytest.raises(LockprobeError, match=reason) as info:
        parse_database_header(bytes(data))
    assert info.value.exit_code == EXIT_CORRUPT_HEADER


def test_wal_checksum_matches_the_shm_header_sqlite_wrote(wal_db, holder):
    holder(wal_db, "wal-idle")
    shm = Path(f"{wal_db}-shm").read_bytes()
    header = parse_shm_header(shm)
    assert header is not None and header.first.checksum_ok
    broken = bytearray(shm)
    broken[8] ^= 0xFF  # iChange, in both copies so that only the checksum can tell
    broken[56] ^= 0xFF
    damaged = parse_shm_header(bytes(broken))
    assert damaged is not None and damaged.copies_match
    assert not damaged.first.checksum_ok and not damaged.valid


# ---- fuzzing: no input may raise anything but LockprobeError --------------------------------

VALID_HEADER = bytes.fromhex(
    "53514c69746520666f726d6174203300100001010040202000000002000000020000000000000000"
    "00000001000000040000000000000000000000010000000000000000000000000000000000000000"
    "00000000000000000000000000000002002e5f11"
)


def _parse_all(data: bytes) -> None:
    with contextlib.suppress(LockprobeError):
        parse_database_header(data)
    parse_wal_header(data)
    parse_shm_header(data)
    parse_journal_header(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parsers(data):
    _parse_all(data)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 99), st.integers(0, 255)), max_size=8), st.integers(0, 100)
)
def test_mutated_valid_headers_never_crash_the_parsers(mutations, cut):
    data = bytearray(VALID_HEADER)
    for offset, value in mutations:
        data[offset] = value
    _parse_all(bytes(data[:cut]))
    _parse_all(bytes(data) * 2)


def test_the_fuzz_seed_is_a_valid_header():
    assert parse_database_header(VALID_HEADER).page_size == 4096
