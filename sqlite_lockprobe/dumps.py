"""The recorder's dumps: the last N seconds of events written to a file of the user's choosing
when a connection's busy handler gives up (the call then fails with "database is locked"), or
on a signal. The busy handler only queues the request (SQLite holds the connection's mutex
there); a background thread writes the file, through Recorder.save's serializer.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_lockprobe.errors import LockprobeError

DEFAULT_DUMP_SECONDS = 30.0
DEFAULT_DUMP_INTERVAL = 60.0

_STOP = object()


def dump_target(where: str | os.PathLike[str]) -> Path:
    """Check `dump_on_locked` once, at start: an existing writable directory, or a file path
    in one (each dump then adds a timestamp to its name). Raises LockprobeError."""
    target = Path(os.fspath(where))
    folder = target if target.is_dir() else target.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise LockprobeError(f"dump_on_locked: {folder} is not a writable directory")
    return target


def dump_path(target: Path, reason: str) -> Path:
    """A new file for one dump: `target/lockprobe-<reason>-<UTC time>-<pid>.jsonl`, or for a
    file path `name-<reason>-<UTC time>-<pid>.suffix` beside it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if target.is_dir():
        return target / f"lockprobe-{reason}-{stamp}-{os.getpid()}.jsonl"
    suffix = target.suffix or ".jsonl"
    return target.with_name(f"{target.stem}-{reason}-{stamp}-{os.getpid()}{suffix}")


class Dumper:
    """The thread that writes dumps. `locked()` runs inside SQLite's busy handler: it only puts
    a request in a queue. Give-up dumps are at most one per `interval` seconds (the others
    are counted in `skipped`); signal and explicit dumps always write."""

    def __init__(self, recorder: Any, target: Path, seconds: float, interval: float) -> None:
        self._recorder = recorder
        self.target = target
        self.seconds = seconds
        self.interval = interval
        self.paths: list[Path] = []
        self.skipped = 0
        self.errors: list[str] = []
        self._last_locked_ns: int | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="lockprobe-dumper", daemon=True)
        self._thread.start()

    def locked(self) -> None:
        """A busy handler gave up (called from inside it: queue only)."""
        self._queue.put("locked")

    def signalled(self) -> None:
        self._queue.put("signal")

    def settle(self) -> None:
        """Return once every request queued so far is handled (tests, and stop)."""
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            try:
                if request is _STOP:
                    return
                now = time.monotonic_ns()
                if request == "locked":
                    last = self._last_locked_ns
                    if last is not None and now - last < self.interval * 1e9:
                        self.skipped += 1
                        continue
                    self._last_locked_ns = now
                path = dump_path(self.target, request)
                try:
                    self._recorder.dump(path, self.seconds)
                    self.paths.append(path)
                except Exception as exc:  # a full disk must not end the thread
                    self.errors.append(f"{path}: {exc}")
            finally:
                self._queue.task_done()
