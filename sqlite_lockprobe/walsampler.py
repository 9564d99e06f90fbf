"""Samples the -wal file and the WAL-index (-shm) header while a run goes on, so checkpoint
starvation shows as data: WAL size, frames written, frames checkpointed."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from sqlite_lockprobe.probe import Emit

# The WAL-index header (wal.c, WalIndexHdr) is in native byte order: mxFrame is the u32 at
# offset 16 of the first copy; the checkpoint info (WalCkptInfo) follows the two 48-byte
# copies, and its first field nBackfill is the u32 at offset 96.
_MX_FRAME_OFFSET = 16
_BACKFILL_OFFSET = 96


def read_wal_sample(db_path: Path) -> tuple[int, int | None, int | None]:
    """(WAL bytes, mxFrame, nBackfill) read with plain reads: no lock, no file created."""
    try:
        wal_bytes = os.stat(f"{db_path}-wal").st_size
    except FileNotFoundError:
        return 0, None, None
    try:
        with open(f"{db_path}-shm", "rb") as shm:
            head = shm.read(_BACKFILL_OFFSET + 4)
    except OSError:
        return wal_bytes, None, None
    if len(head) < _BACKFILL_OFFSET + 4:
        return wal_bytes, None, None
    (mx_frame,) = struct.unpack_from("=I", head, _MX_FRAME_OFFSET)
    (backfilled,) = struct.unpack_from("=I", head, _BACKFILL_OFFSET)
    return wal_bytes, mx_frame, backfilled


class WalSampler:
    def __init__(self, db_path: Path, emit: Emit, interval: float = 0.05) -> None:
        self.db_path = db_path
        self.emit = emit
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lockprobe-wal", daemon=True)

    def _loop(self) -> None:
        while True:
            self.emit(("wal", time.monotonic_ns(), *read_wal_sample(self.db_path)))
            if self._stop.wait(self.interval):
                break

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
