"""external-holder: the lock was held by a process outside the workload.

While a recorded connection waited, the probe read the OS lock table (/proc/locks, or F_GETLK
on the lock bytes: locktable.py). When no recorded connection held the write lock at that
moment and another process held a lock that blocks the wait, that process is the holder. The
OS table names processes, never connections (POSIX locks are per process), so the finding
names a program: pid, name, command line, user and the SQLite lock it held.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import external_blockers, waits_of
from sqlite_lockprobe.diagnose.evidence import (
    NearMiss,
    at,
    near_miss,
    wait_facts,
    wait_line,
    wait_order,
)
from sqlite_lockprobe.diagnose.model import BusyWait, OsLock, OsLockSample, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
CMDLINE_WIDTH = 160
_WRITE_LOCKS = ("EXCLUSIVE", "PENDING", "RESERVED", "WAL_WRITE_LOCK", "WAL_RECOVER_LOCK")


@dataclass
class _Outsider:
    """One outside process and everything seen of it while recorded connections waited."""

    pid: int
    first: OsLock
    first_seen: int
    last_seen: int
    locks: set[str] = field(default_factory=set)
    samples: set[int] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)
    waits: dict[int, BusyWait] = field(default_factory=dict)

    def see(self, sample: OsLockSample, lock: OsLock, wait: BusyWait) -> None:
        self.first_seen = min(self.first_seen, sample.t)
        self.last_seen = max(self.last_seen, sample.t)
        self.locks.add(lock.name)
        self.samples.add(id(sample))
        self.sources.add(sample.source)
        self.waits[id(wait)] = wait
        if self.first.cmdline is None and lock.cmdline is not None:
            self.first = lock


def detect(timeline: Timeline) -> list[Finding]:
    """One finding per outside process that held a blocking lock during recorded waits."""
    if not timeline.os_lock_samples:
        return []
    outsiders: dict[int, _Outsider] = {}
    for wait in waits_of(PATTERN, timeline):
        for sample, lock in external_blockers(wait, timeline):
            assert lock.pid is not None
            seen = outsiders.get(lock.pid)
            if seen is None:
                seen = outsiders[lock.pid] = _Outsider(lock.pid, lock, sample.t, sample.t)
            seen.see(sample, lock, wait)
    origin = timeline.origin_ns
    ranked = sorted(outsiders.values(), key=lambda o: (o.first_seen, o.pid))
    return [_finding(outsider, timeline, origin) for outsider in ranked]


def lock_names(outsider_locks: set[str]) -> list[str]:
    """Strongest first (EXCLUSIVE before SHARED), as inspect orders them."""
    order = {name: i for i, name in enumerate((*_WRITE_LOCKS, "SHARED"))}
    return sorted(outsider_locks, key=lambda n: (order.get(n, 99), n))


def describe_process(lock: OsLock) -> str:
    """'pid 4121 (sqlite3, user alice): `sqlite3 app.db`' with what is known."""
    about = [part for part in (lock.process_name, _user(lock)) if part]
    text = f"pid {lock.pid}" + (f" ({', '.join(about)})" if about else "")
    if lock.cmdline:
        command = shlex.join(lock.cmdline)
        if len(command) > CMDLINE_WIDTH:
            command = command[: CMDLINE_WIDTH - 3] + "..."
        text += f": `{command}`"
    return text


def _user(lock: OsLock) -> str | None:
    if lock.user:
        return f"user {lock.user}"
    if lock.uid is not None:
        return f"uid {lock.uid}"
    return None


def _evidence(
    outsider: _Outsider, timeline: Timeline, waits: list[BusyWait], missed: NearMiss | None
) -> list[str]:
    origin = timeline.origin_ns
    failed = [w for w in waits if w.failed]
    names = lock_names(outsider.locks)
    lock_text = " and ".join(names)
    files = (
        "the -shm file (WAL index)"
        if any(n.startswith("WAL_") for n in names)
        else ("the database file")
    )
    who = describe_process(outsider.first)
    seen = (
        f"seen from {at(outsider.first_seen, origin)} to {at(outsider.last_seen, origin)} in "
        f"{len(outsider.samples)} reading{'s' if len(outsider.samples) != 1 else ''} of the OS "
        f"lock table ({', '.join(sorted(outsider.sources))})"
    )
    evidence = [
        f"{who} held {lock_text} on {files}; {seen}",
        f"no recorded connection held the {'WAL write lock' if timeline.is_wal else 'write lock'}"
        f" at those moments; {len(waits)} wait{'s' if len(waits) != 1 else ''} "
        f"({len(failed)} failed) met this lock",
    ]
    if missed is not None:
        evidence.append(missed.line)
    if outsider.first.started is not None:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(outsider.first.started))
        evidence.append(f"that process has been running since {started}")
    for wait in waits[:WORST_SHOWN]:
        evidence.append(("failed: " if wait.failed else "waited: ") + wait_line(wait, origin))
    if not any(n in _WRITE_LOCKS for n in names):
        evidence.append(
            "it held only SHARED: a reader (an open read transaction or an unfinished query) "
            "that keeps a rollback-journal COMMIT from taking EXCLUSIVE"
        )
    evidence.append(
        "POSIX locks belong to a process: the OS names the program, not which of its "
        "connections or statements holds the lock"
    )
    return evidence


def _finding(outsider: _Outsider, timeline: Timeline, origin: int) -> Finding:
    waits = sorted(outsider.waits.values(), key=wait_order)
    failed = [w for w in waits if w.failed]
    names = lock_names(outsider.locks)
    writes = [n for n in names if n in _WRITE_LOCKS]
    # A near-miss is worth a line only when nothing failed.
    missed = None if failed else near_miss([w for w in waits if w.duration_ms * 2 >= w.timeout_ms])
    evidence = _evidence(outsider, timeline, waits, missed)
    program = outsider.first.process_name or f"pid {outsider.pid}"
    return Finding(
        pattern=PATTERN,
        title=f"Another program holds the lock: {program} (pid {outsider.pid}) holds {names[0]}",
        severity="error" if failed else "warning",
        confidence="high" if writes else "medium",
        explanation=(
            "The lock these connections waited for was held by a process that is not part of "
            "the workload: none of the recorded connections held it at the time, and the "
            "operating system's lock table named the other process. Typical holders are a DB "
            "browser or sqlite3 shell left with uncommitted changes, a backup or cron job, or "
            "another service on the same file. Nothing the workload does can release it; raising "
            "busy_timeout only waits longer."
        ),
        evidence=tuple(evidence),
        advice=(
            advice.close_external_holder(),
            advice.read_only_tools(),
            advice.schedule_elsewhere(),
        ),
        facts={
            "holder": {
                "pid": outsider.pid,
                "name": outsider.first.process_name,
                "cmdline": list(outsider.first.cmdline) if outsider.first.cmdline else None,
                "user": outsider.first.user,
                "uid": outsider.first.uid,
                "started": outsider.first.started,
                "locks": names,
                "first_seen_ms": round((outsider.first_seen - origin) / 1e6, 1),
                "last_seen_ms": round((outsider.last_seen - origin) / 1e6, 1),
                "samples": len(outsider.samples),
                "sources": sorted(outsider.sources),
            },
            "waits": len(waits),
            "failed": len(failed),
            "first": wait_facts(waits[0], origin),
            **({"near_miss": missed.facts} if missed is not None else {}),
        },
    )
