"""The WAL of each database a traced process has open, sampled from inside that process: the
-wal size and the WAL-index (-shm) header, so that checkpoint starvation shows under
`lockprobe trace` as it does under `run` (walsampler.py).

It runs on the event file's flusher tick (eventfile.EventFile.tick), never on a call's path.
Standard library only: it runs in the traced program.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import struct
import time
from collections.abc import Callable
from typing import Any

# The WAL-index header (wal.c, WalIndexHdr) is in native byte order: mxFrame is the u32 at
# offset 16 of the first copy; the checkpoint info (WalCkptInfo) follows the two 48-byte
# copies, and its first field nBackfill is the u32 at offset 96.
_MX_FRAME_OFFSET = 16
_BACKFILL_OFFSET = 96
_HEADER_BYTES = _BACKFILL_OFFSET + 4
_SHM_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def wal_index_frames(shm_fd: int) -> tuple[int | None, int | None]:
    """(mxFrame, nBackfill) from the WAL-index header: one pread, no lock taken. Each is an
    aligned u32, so a read racing a writer sees the old value or the new one."""
    try:
        head = os.pread(shm_fd, _HEADER_BYTES, 0)
    except OSError:
        return None, None
    if len(head) < _HEADER_BYTES:
        return None, None
    (mx_frame,) = struct.unpack_from("=I", head, _MX_FRAME_OFFSET)
    (backfilled,) = struct.unpack_from("=I", head, _BACKFILL_OFFSET)
    return mx_frame, backfilled


class TraceWal:
    """This process's open databases (counted by the tracer's open and close), and a `wal`
    event for each of them in WAL mode (its -wal file exists) at every `tick`.

    POSIX locks belong to the process, and closing *any* descriptor of a file drops every
    lock the process holds on it (fcntl(2)): the program's connections hold the -shm DMS lock,
    and the WAL write and read locks are bytes of -shm too. So a -shm descriptor, once opened,
    is kept for the life of the process and closed only when its file has been deleted
    (st_nlink 0). SQLite deletes -shm only when the last connection to the database in any
    process closes, having taken the EXCLUSIVE lock on the database (wal.c sqlite3WalClose,
    os_unix.c unixShmUnmap), and every WAL connection that has read holds SHARED until it
    closes: so no connection still uses a deleted -shm, and closing it releases nothing. It
    also keeps a process that opens many databases in turn (a test suite's temporary ones)
    from keeping one descriptor for each."""

    def __init__(self, emit: Callable[[tuple[Any, ...]], None]) -> None:
        self.emit = emit
        self._lock = _thread.allocate_lock()
        self._open: dict[str, int] = {}  # real path -> connections of this process open on it
        self._shm: dict[str, tuple[int, int, int]] = {}  # real path -> (fd, st_dev, st_ino)

    def opened(self, path: str) -> None:
        with self._lock:
            self._open[path] = self._open.get(path, 0) + 1

    def closed(self, path: str | None) -> None:
        if path is None:
            return
        with self._lock:
            left = self._open.get(path, 0) - 1
            if left > 0:
                self._open[path] = left
            else:
                self._open.pop(path, None)

    def forget_connections(self) -> None:
        """In a forked child: the connections are the parent's, which samples them. The -shm
        descriptors are inherited and stay (closing one could drop this child's locks)."""
        self._lock = _thread.allocate_lock()
        self._open = {}

    def tick(self) -> None:
        """One `wal` event per database this process has open in WAL mode; -shm descriptors
        of deleted files are let go first."""
        self._let_go_of_deleted()
        for path in list(self._open):
            with self._lock:  # its time is between this process's open and close events
                if path not in self._open:
                    continue
                t = time.monotonic_ns()
            record = self.sample(path, t)
            if record is not None:
                self.emit(record)

    def sample(self, path: str, t: int) -> tuple[Any, ...] | None:
        """("wal", t, bytes, mx_frame, backfilled, db), or None when `path` has no -wal file
        (not in WAL mode, or not read yet)."""
        try:
            wal_bytes = os.stat(path + "-wal").st_size
        except OSError:
            return None
        fd = self._shm_fd(path)
        mx_frame, backfilled = (None, None) if fd is None else wal_index_frames(fd)
        return ("wal", t, wal_bytes, mx_frame, backfilled, path)

    def _shm_fd(self, path: str) -> int | None:
        kept = self._shm.get(path)
        if kept is not None:
            return kept[0]
        try:
            fd = os.open(path + "-shm", _SHM_FLAGS)
        except OSError:
            return None  # not there (yet), or EXCLUSIVE locking mode: the index is in memory
        st = os.fstat(fd)
        self._shm[path] = (fd, st.st_dev, st.st_ino)
        return fd

    def _let_go_of_deleted(self) -> None:
        for path, (fd, dev, ino) in list(self._shm.items()):
            try:
                st = os.fstat(fd)
            except OSError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != (dev, ino):
                # The program closed this number itself (os.closerange...) and may have it
                # for another file now: forget it, never close it.
                del self._shm[path]
            elif st.st_nlink == 0:
                del self._shm[path]
                with contextlib.suppress(OSError):
                    os.close(fd)
