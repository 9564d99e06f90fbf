"""`inspect --watch`: inspect again and again, and turn the differences into lock changes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.sources.inspect.inspection import Inspection, inspect_database


@dataclass(frozen=True)
class LockChange:
    """A process gained or released one SQLite lock between two inspections."""

    at: float  # epoch seconds of the inspection that saw the change
    pid: int | None
    process_name: str | None
    lock: str
    kind: str
    change: str  # "gained" or "released"

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "pid": self.pid,
            "process_name": self.process_name,
            "lock": self.lock,
            "kind": self.kind,
            "change": self.change,
        }


def _held(inspection: Inspection) -> dict[tuple[int | None, str, str], str | None]:
    return {
        (h.pid, lock.name, lock.kind): h.process.name if h.process else None
        for h in inspection.holders
        for lock in h.locks
    }


def lock_changes(before: Inspection | None, after: Inspection) -> list[LockChange]:
    """Locks in `after` but not `before` are gained, the reverse released; a first inspection
    reports everything it sees as gained. Ordered released first, then by pid and lock."""
    old = _held(before) if before is not None else {}
    new = _held(after)
    changes = [
        LockChange(after.taken_at, pid, old[(pid, lock, kind)], lock, kind, "released")
        for pid, lock, kind in old.keys() - new.keys()
    ]
    changes += [
        LockChange(after.taken_at, pid, new[(pid, lock, kind)], lock, kind, "gained")
        for pid, lock, kind in new.keys() - old.keys()
    ]
    changes.sort(key=lambda c: (c.change != "released", c.pid or 0, c.lock))
    return changes


def watch_inspections(
    path: str, interval: float, sleep: Callable[[float], None] = time.sleep
) -> Iterator[tuple[Inspection, list[LockChange]]]:
    """Inspect every `interval` seconds, forever, yielding each inspection with its changes."""
    previous: Inspection | None = None
    while True:
        current = inspect_database(path)
        yield current, lock_changes(previous, current)
        previous = current
        sleep(interval)
