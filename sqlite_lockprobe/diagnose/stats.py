"""The run summary: per worker group, what was done, what failed, and how long waits took."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.diagnose.activity import (
    ActivityCounter,
    CallCounts,
    percentile,
)
from sqlite_lockprobe.diagnose.model import Timeline


@dataclass(frozen=True)
class WaitStats:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, durations_ms: list[float]) -> WaitStats:
        values = sorted(durations_ms)
        return cls(
            count=len(values),
            p50_ms=percentile(values, 50),
            p95_ms=percentile(values, 95),
            p99_ms=percentile(values, 99),
            max_ms=values[-1] if values else 0.0,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class GroupStats:
    group: str
    kind: str
    workers: int
    calls: int
    commits: int
    rollbacks: int
    errors: dict[str, int]
    busy_errors: int
    handler_calls: int
    waits: WaitStats
    commits_per_second: float
    crashes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["waits"] = self.waits.to_json()
        out["crashes"] = list(self.crashes)
        out["commits_per_second"] = round(self.commits_per_second, 1)
        return out


@dataclass(frozen=True)
class RunSummary:
    groups: tuple[GroupStats, ...]
    total: GroupStats
    active_seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [g.to_json() for g in self.groups],
            "total": self.total.to_json(),
            "active_seconds": round(self.active_seconds, 3),
            "notes": list(self.notes),
        }


def summarize(timeline: Timeline, activity: ActivityCounter) -> RunSummary:
    """Per-group and total statistics from the timeline and the counted activity. Calls,
    commits and waits are each put in the group of the worker that made them, and the total
    is the sum of the groups."""
    seconds = ((activity.last_ns or 0) - (activity.first_ns or 0)) / 1e9
    counted = activity.groups
    workers = activity.workers
    group_of = activity.actor_group
    commits: Counter[str] = Counter(
        group_of(h.holder)
        for h in timeline.write_holds
        if h.released_by in ("COMMIT", "autocommit")
    )
    waits: dict[str, list[float]] = {}
    for w in timeline.waits:
        waits.setdefault(group_of(w.waiter), []).append(w.duration_ms)

    def stats(
        name: str,
        kind: str,
        members: int,
        chosen: list[CallCounts],
        n_commits: int,
        durations: list[float],
        crashes: list[str],
    ) -> GroupStats:
        counts = CallCounts()
        for c in chosen:
            counts.add(c)
        return GroupStats(
            group=name,
            kind=kind,
            workers=members,
            calls=counts.calls,
            commits=n_commits,
            rollbacks=counts.rollbacks,
            errors=dict(sorted(counts.errors.items())),
            busy_errors=counts.busy_errors,
            handler_calls=counts.handler_calls,
            waits=WaitStats.of(durations),
            commits_per_second=n_commits / seconds if seconds > 0 else 0.0,
            crashes=tuple(crashes),
        )

    names = sorted(set(counted) | set(workers) | set(commits) | set(waits))
    groups = tuple(
        stats(
            name,
            activity.kinds.get(name, ""),
            workers.get(name, 0),
            [counted[name]] if name in counted else [],
            commits[name],
            waits.get(name, []),
            activity.crashes.get(name, []),
        )
        for name in names
    )
    total = stats(
        "all",
        "",
        sum(workers.values()),
        list(counted.values()),
        sum(commits.values()),
        [d for durations in waits.values() for d in durations],
        [c for crashes in activity.crashes.values() for c in crashes],
    )
    notes = []
    if timeline.reduced_detail:
        notes.append(
            "reduced detail: the probe's busy-handler hook could not be installed on some "
            "connections, so waits that did not fail are not seen there"
        )
    return RunSummary(groups=groups, total=total, active_seconds=seconds, notes=tuple(notes))
