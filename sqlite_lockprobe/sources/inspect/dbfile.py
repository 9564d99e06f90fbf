"""Read a SQLite database's on-disk state without SQLite: the database header, the -wal header,
the -shm WAL-index header and the rollback -journal header.

Everything here is read-only: files are opened with O_RDONLY (never O_CREAT), so inspecting
cannot create a -wal/-shm/-journal file, take a lock or change an mtime. The parsers are pure
functions over bytes; a damaged or hostile file can only raise `LockprobeError`.

Layouts: https://www.sqlite.org/fileformat2.html (database header, WAL, rollback journal),
https://www.sqlite.org/walformat.html and src/wal.c (WalIndexHdr, WalCkptInfo).

Exit codes of the errors raised here (the CLI exits with them):

====  ==========================================================================
3     the path does not exist
4     the path is a directory or another non-regular file (FIFO, device, socket)
5     permission denied (the file or a directory on its path)
6     not a SQLite database (the first 16 bytes are not "SQLite format 3\\0")
7     a SQLite database whose header is truncated or corrupt
8     an operating-system error while reading (I/O error and the like)
====  ==========================================================================
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.errors import LockprobeError

EXIT_NOT_FOUND = 3
EXIT_NOT_A_FILE = 4
EXIT_PERMISSION = 5
EXIT_NOT_SQLITE = 6
EXIT_CORRUPT_HEADER = 7
EXIT_READ_ERROR = 8

SQLITE_MAGIC = b"SQLite format 3\x00"
DB_HEADER_SIZE = 100
# wal.c: WAL_MAGIC; the low bit says whether frame checksums are big-endian.
WAL_MAGIC = 0x377F0682
WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
# wal.c: sizeof(WalIndexHdr)*2 + sizeof(WalCkptInfo) = 48*2 + 40.
WAL_INDEX_HEADER_SIZE = 48
SHM_HEADER_SIZE = 136
READMARK_NOT_USED = 0xFFFFFFFF
WAL_NREADER = 5
# pager.c: aJournalMagic, the first 8 bytes of a valid rollback journal header.
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
JOURNAL_HEADER_SIZE = 28

TEXT_ENCODINGS = {1: "UTF-8", 2: "UTF-16le", 3: "UTF-16be"}

_DB_HEADER = struct.Struct(">16sHBBBBBBIIIIIIIIIIII20sII")
_WAL_HEADER = struct.Struct(">IIIIIIII")
# The -shm file is in the machine's native byte order (it is never moved between machines).
_WAL_INDEX_HEADER = struct.Struct("=IIIBBHII2I2I2I")
_CKPT_INFO = struct.Struct("=I5I8sII")
_JOURNAL_HEADER = struct.Struct(">8sIIIII")


@dataclass(frozen=True)
class DatabaseHeader:
    """The 100-byte header at the start of page 1 (fileformat2.html section 1.3)."""

    page_size: int
    write_version: int
    read_version: int
    reserved_bytes: int
    change_counter: int
    header_page_count: int
    freelist_trunk_page: int
    freelist_pages: int
    schema_cookie: int
    schema_format: int
    default_cache_size: int
    autovacuum_top_root: int
    text_encoding: int
    user_version: int
    incremental_vacuum: int
    application_id: int
    version_valid_for: int
    sqlite_version_number: int

    @property
    def journal_mode(self) -> str:
        """ "wal" when the header records WAL mode (versions 2), else "rollback"."""
        return "wal" if self.write_version == 2 or self.read_version == 2 else "rollback"

    @property
    def text_encoding_name(self) -> str:
        if self.text_encoding == 0:
            return "not set"
        return TEXT_ENCODINGS.get(self.text_encoding, f"invalid ({self.text_encoding})")

    @property
    def sqlite_version(self) -> str:
        """SQLITE_VERSION_NUMBER X*1000000+Y*1000+Z as "X.Y.Z"."""
        n = self.sqlite_version_number
        return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"

    @property
    def header_page_count_valid(self) -> bool:
        """The in-header size is used only if nonzero and written by SQLite >= 3.7.0, shown by
        the version-valid-for number matching the change counter (fileformat2.html 1.3.7)."""
        return self.header_page_count > 0 and self.change_counter == self.version_valid_for

    def page_count(self, file_size: int) -> int:
        """Pages in the database, by SQLite's rule: the header's count when valid, else the
        file size divided by the page size."""
        if self.header_page_count_valid:
            return self.header_page_count
        return file_size // self.page_size

    def to_json(self) -> dict[str, Any]:
        return {
            "page_size": self.page_size,
            "write_version": self.write_version,
            "read_version": self.read_version,
            "journal_mode": self.journal_mode,
            "reserved_bytes": self.reserved_bytes,
            "change_counter": self.change_counter,
            "header_page_count": self.header_page_count,
            "header_page_count_valid": self.header_page_count_valid,
            "freelist_trunk_page": self.freelist_trunk_page,
            "freelist_pages": self.freelist_pages,
            "schema_cookie": self.schema_cookie,
            "schema_format": self.schema_format,
            "default_cache_size": self.default_cache_size,
            "auto_vacuum": self.autovacuum_top_root != 0,
            "incremental_vacuum": self.incremental_vacuum != 0,
            "text_encoding": self.text_encoding_name,
            "user_version": self.user_version,
            "application_id": self.application_id,
            "sqlite_version": self.sqlite_version,
            "sqlite_version_number": self.sqlite_version_number,
        }


def parse_database_header(data: bytes, name: str = "file") -> DatabaseHeader:
    """Parse and check the database header the way btree.c lockBtree() does before trusting it.

    Raises LockprobeError: EXIT_NOT_SQLITE for a wrong magic string, EXIT_CORRUPT_HEADER for a
    short header or values SQLite itself rejects (page size, payload fractions, usable size).
    """
    if not data.startswith(SQLITE_MAGIC) and not (data and SQLITE_MAGIC.startswith(data)):
        raise LockprobeError(f"{name} is not a SQLite database (bad magic header)", EXIT_NOT_SQLITE)
    if len(data) < DB_HEADER_SIZE:
        raise LockprobeError(
            f"{name} has a truncated SQLite header ({len(data)} of {DB_HEADER_SIZE} bytes)",
            EXIT_CORRUPT_HEADER,
        )
    f = _DB_HEADER.unpack_from(data)
    raw_page_size = f[1]
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise LockprobeError(
            f"{name} has a corrupt SQLite header (page size {raw_page_size})", EXIT_CORRUPT_HEADER
        )
    if (f[5], f[6], f[7]) != (64, 32, 32):
        raise LockprobeError(
            f"{name} has a corrupt SQLite header (payload fractions {f[5]}/{f[6]}/{f[7]}, "
            "expected 64/32/32)",
            EXIT_CORRUPT_HEADER,
        )
    if page_size - f[4] < 480:
        raise LockprobeError(
            f"{name} has a corrupt SQLite header ({f[4]} reserved bytes per {page_size}-byte page)",
            EXIT_CORRUPT_HEADER,
        )
    return DatabaseHeader(
        page_size=page_size,
        write_version=f[2],
        read_version=f[3],
        reserved_bytes=f[4],
        change_counter=f[8],
        header_page_count=f[9],
        freelist_trunk_page=f[10],
        freelist_pages=f[11],
        schema_cookie=f[12],
        schema_format=f[13],
        default_cache_size=f[14],
        autovacuum_top_root=f[15],
        text_encoding=f[16],
        user_version=f[17],
        incremental_vacuum=f[18],
        application_id=f[19],
        version_valid_for=f[21],
        sqlite_version_number=f[22],
    )


@dataclass(frozen=True)
class WalHeader:
    """The 32-byte -wal file header (fileformat2.html section 4.1), big-endian."""

    magic: int
    format_version: int
    page_size: int
    checkpoint_sequence: int
    salt: tuple[int, int]
    checksum: tuple[int, int]

    @property
    def big_endian_checksums(self) -> bool:
        return bool(self.magic & 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "magic": f"0x{self.magic:08x}",
            "format_version": self.format_version,
            "page_size": self.page_size,
            "checkpoint_sequence": self.checkpoint_sequence,
            "salt": list(self.salt),
            "checksum": list(self.checksum),
            "big_endian_checksums": self.big_endian_checksums,
        }


def parse_wal_header(data: bytes) -> WalHeader | None:
    """The -wal header, or None when absent or not valid (an empty -wal is normal: SQLite
    truncates it, and writes a new header when the next transaction starts the log)."""
    if len(data) < WAL_HEADER_SIZE:
        return None
    magic, version, raw_page_size, seq, salt1, salt2, ck1, ck2 = _WAL_HEADER.unpack_from(data)
    if magic & 0xFFFFFFFE != WAL_MAGIC:
        return None
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return None
    return WalHeader(magic, version, page_size, seq, (salt1, salt2), (ck1, ck2))


def wal_frames_in_file(size: int, page_size: int) -> int:
    """Complete frames the -wal file has room for. The file is reused from the start after a
    checkpoint, so this is a high-water mark, not the count of valid frames (see mxFrame)."""
    if size <= WAL_HEADER_SIZE:
        return 0
    return (size - WAL_HEADER_SIZE) // (page_size + WAL_FRAME_HEADER_SIZE)


def wal_checksum(data: bytes, big_endian: bool, s1: int = 0, s2: int = 0) -> tuple[int, int]:
    """wal.c walChecksumBytes: the Fibonacci-weighted checksum over 8-byte words."""
    fmt = ">" if big_endian else "<"
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data[: len(data) // 8 * 8])
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


@dataclass(frozen=True)
class WalIndexHeader:
    """One copy of WalIndexHdr at the start of the -shm file (wal.c)."""

    version: int
    change: int
    is_init: bool
    big_endian_checksums: bool
    page_size: int
    max_frame: int
    page_count: int
    salt: tuple[int, int]
    checksum_ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "change": self.change,
            "is_init": self.is_init,
            "page_size": self.page_size,
            "max_frame": self.max_frame,
            "page_count": self.page_count,
            "salt": list(self.salt),
            "checksum_ok": self.checksum_ok,
        }


def _parse_wal_index_copy(data: bytes) -> WalIndexHeader:
    fields = _WAL_INDEX_HEADER.unpack_from(data)
    version, _unused, change, is_init, big_end, raw_page_size, max_frame, page_count = fields[:8]
    # wal.c copies the salt bytes verbatim from the (big-endian) -wal header: read them so.
    salt = struct.unpack_from(">2I", data, 32)
    stored = (fields[12], fields[13])
    # walIndexWriteHdr checksums the first 40 bytes in native byte order.
    checksum_ok = wal_checksum(data[:40], big_endian=sys.byteorder == "big") == stored
    # wal.c stores szPage as (size & 0xff00) | (size >> 16): 1 means 65536.
    page_size = (raw_page_size & 0xFE00) + ((raw_page_size & 1) << 16)
    return WalIndexHeader(
        version=version,
        change=change,
        is_init=bool(is_init),
        big_endian_checksums=bool(big_end),
        page_size=page_size,
        max_frame=max_frame,
        page_count=page_count,
        salt=salt,
        checksum_ok=checksum_ok,
    )


@dataclass(frozen=True)
class ShmHeader:
    """The WAL-index header (two copies of WalIndexHdr) and the checkpoint info (WalCkptInfo).

    `valid` follows walIndexTryHdr: both copies equal, initialised, checksum right. Only then are
    max_frame, backfilled and the read marks what the connections are using.
    """

    first: WalIndexHeader
    copies_match: bool
    backfilled: int
    read_marks: tuple[int | None, ...]
    backfill_attempted: int

    @property
    def valid(self) -> bool:
        return self.copies_match and self.first.is_init and self.first.checksum_ok

    @property
    def frames_not_checkpointed(self) -> int:
        """Frames in the WAL not yet copied into the database file (mxFrame - nBackfill)."""
        return max(0, self.first.max_frame - self.backfilled)

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "copies_match": self.copies_match,
            "header": self.first.to_json(),
            "backfilled": self.backfilled,
            "backfill_attempted": self.backfill_attempted,
            "frames_not_checkpointed": self.frames_not_checkpointed,
            "read_marks": list(self.read_marks),
        }


def parse_shm_header(data: bytes) -> ShmHeader | None:
    """The -shm header, or None when the file is shorter than the header (SQLite truncates
    it to a few bytes while it (re)builds the index)."""
    if len(data) < SHM_HEADER_SIZE:
        return None
    first = _parse_wal_index_copy(data[:WAL_INDEX_HEADER_SIZE])
    copies_match = data[:WAL_INDEX_HEADER_SIZE] == data[WAL_INDEX_HEADER_SIZE : 2 * 48]
    backfilled, *marks_and_rest = _CKPT_INFO.unpack_from(data, 2 * WAL_INDEX_HEADER_SIZE)
    marks = marks_and_rest[:WAL_NREADER]
    attempted = marks_and_rest[WAL_NREADER + 1]
    read_marks = tuple(None if m == READMARK_NOT_USED else m for m in marks)
    return ShmHeader(first, copies_match, backfilled, read_marks, attempted)


@dataclass(frozen=True)
class JournalHeader:
    """The rollback journal header (fileformat2.html section 3), big-endian."""

    zeroed: bool
    magic_ok: bool
    record_count: int
    nonce: int
    initial_page_count: int
    sector_size: int
    page_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "zeroed": self.zeroed,
            "magic_ok": self.magic_ok,
            "record_count": self.record_count,
            "initial_page_count": self.initial_page_count,
            "sector_size": self.sector_size,
            "page_size": self.page_size,
        }


def parse_journal_header(data: bytes) -> JournalHeader:
    """Parse a journal's header; a short or empty journal reads as zeroed, as pager.c does."""
    padded = data[:JOURNAL_HEADER_SIZE].ljust(JOURNAL_HEADER_SIZE, b"\x00")
    magic, nrec, nonce, pages, sector, page_size = _JOURNAL_HEADER.unpack(padded)
    return JournalHeader(
        # hasHotJournal reads only the first byte: zero means not hot (PERSIST mode zeroes it).
        zeroed=padded[0] == 0,
        magic_ok=magic == JOURNAL_MAGIC,
        record_count=nrec,
        nonce=nonce,
        initial_page_count=pages,
        sector_size=sector,
        page_size=page_size,
    )


def journal_is_hot(header: JournalHeader, reserved_lock_held: bool, database_pages: int) -> bool:
    """pager.c hasHotJournal: the journal exists, nobody holds RESERVED (or more) on the
    database, the database is not empty, and the journal's first byte is not zero.
    A hot journal is rolled back by the next connection that reads the database."""
    return not reserved_lock_held and database_pages > 0 and not header.zeroed


# ---- reading files, read-only -------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def _error_for(path: str, exc: OSError) -> LockprobeError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return LockprobeError(f"{path}: no such file", EXIT_NOT_FOUND)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LockprobeError(f"{path}: permission denied", EXIT_PERMISSION)
    if exc.errno == errno.EISDIR:
        return LockprobeError(f"{path} is a directory, not a database file", EXIT_NOT_A_FILE)
    if exc.errno == errno.ENOTDIR:
        return LockprobeError(f"{path}: a part of the path is not a directory", EXIT_NOT_FOUND)
    return LockprobeError(f"{path}: cannot read ({reason})", EXIT_READ_ERROR)


def stat_database(path: str) -> os.stat_result:
    """stat() the database, turning every way it can be unusable into one clear error."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _error_for(path, exc) from exc
    except ValueError as exc:  # an embedded NUL byte in the path
        raise LockprobeError(f"{path!r}: not a valid path", EXIT_NOT_FOUND) from exc
    if stat.S_ISDIR(st.st_mode):
        raise LockprobeError(f"{path} is a directory, not a database file", EXIT_NOT_A_FILE)
    if not stat.S_ISREG(st.st_mode):
        raise LockprobeError(f"{path} is not a regular file", EXIT_NOT_A_FILE)
    return st


def read_head(path: str, size: int) -> tuple[bytes, os.stat_result]:
    """The first `size` bytes of a file and its fstat, opened read-only and without blocking.

    O_RDONLY without O_CREAT cannot create the file; reading does not change its mtime.
    O_NONBLOCK keeps a FIFO swapped in between stat and open from hanging us.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _error_for(path, exc) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockprobeError(f"{path} is not a regular file", EXIT_NOT_A_FILE)
        return os.pread(fd, size, 0), st
    except OSError as exc:
        raise _error_for(path, exc) from exc
    finally:
        os.close(fd)


def read_optional_head(path: str, size: int) -> tuple[bytes, os.stat_result] | None:
    """Like read_head for a companion file (-wal, -shm, -journal): None when it does not exist.
    Other problems (permission) still raise, so the caller can say what it could not see."""
    try:
        return read_head(path, size)
    except LockprobeError as exc:
        if exc.exit_code == EXIT_NOT_FOUND:
            return None
        raise
