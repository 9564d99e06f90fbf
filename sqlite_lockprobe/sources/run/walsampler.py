"""Samples the -wal file and the WAL-index (-shm) header while a run goes on, so checkpoint
starvation shows as data: WAL size, frames written, frames checkpointed. (Under `trace`, each
traced process samples the databases it has open itself: tracewal.py.)"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from sqlite_lockprobe.probe.capi import Emit
from sqlite_lockprobe.probe.tracewal import wal_index_frames


class WalSampler:
    """Reads the -wal size and the -shm header every `interval` seconds on its own thread.

    POSIX locks belong to the process, and closing *any* descriptor of a file drops every lock
    the process holds on it (fcntl(2)). This process's own SQLite connections hold the -shm
    DMS lock, so the sampler must never open and close -shm while they are open: a connection
    opened next would believe it is the first, truncate -shm, and every mapping of it would
    fault (SIGBUS). So -shm is opened once, read with pread, and closed only by `stop`, which
    the runner calls after every connection of this process is closed."""

    def __init__(self, db_path: Path, emit: Emit, interval: float = 0.05) -> None:
        self.db_path = db_path
        self.emit = emit
        self.interval = interval
        self._shm_fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lockprobe-wal", daemon=True)

    def sample(self) -> tuple[int, int | None, int | None]:
        """(WAL bytes, mxFrame, nBackfill): a stat and a pread, no lock, no file created."""
        try:
            wal_bytes = os.stat(f"{self.db_path}-wal").st_size
        except FileNotFoundError:
            return 0, None, None
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(f"{self.db_path}-shm", os.O_RDONLY)
            except OSError:
                return wal_bytes, None, None
        return (wal_bytes, *wal_index_frames(self._shm_fd))

    def _loop(self) -> None:
        db = os.fspath(self.db_path)
        while True:
            self.emit(("wal", time.monotonic_ns(), *self.sample(), db))
            if self._stop.wait(self.interval):
                break

    def start(self) -> None:
        self._thread.start()

    def stop(self, close: bool = True) -> None:
        """Stop sampling; close -shm only when told this process's connections are closed."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join()
        if close and self._shm_fd is not None:
            os.close(self._shm_fd)
            self._shm_fd = None
