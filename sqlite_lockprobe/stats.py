"""The run summary: per worker group, what was done, what failed, and how long waits took."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.diagnose.statements import statement_kind
from sqlite_lockprobe.resultcodes import code_name


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


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


def summarize(timeline: Timeline, events: list[dict[str, Any]]) -> RunSummary:
    """Per-group and total statistics from the timeline and the worker events."""
    kinds: dict[str, str] = {}
    workers: Counter[str] = Counter()
    crashes: dict[str, list[str]] = {}
    for e in events:
        if e["k"] == "worker":
            kinds[e["group"]] = e.get("kind") or ""
            workers[e["group"]] += 1
        elif e["k"] == "worker_end" and e.get("error"):
            group = str(e["worker"]).split("#")[0]
            crashes.setdefault(group, []).append(f"{e['worker']}: {e['error']}")
    calls = timeline.calls
    active_ns = max(c.t1 for c in calls) - min(c.t0 for c in calls) if calls else 0
    seconds = active_ns / 1e9
    groups = sorted({c.actor.group for c in calls} | set(kinds))

    def stats_for(name: str | None) -> GroupStats:
        mine = [c for c in calls if name is None or c.actor.group == name]
        errors = Counter(code_name(c.ext_error or c.error) for c in mine if c.error is not None)
        commits = sum(
            1
            for h in timeline.write_holds
            if h.released_by in ("COMMIT", "autocommit")
            and (name is None or h.holder.group == name)
        )
        rollbacks = sum(
            1
            for c in mine
            if c.error is None
            and (c.op == "rollback" or any(statement_kind(s) == "rollback" for s in c.statements))
        )
        waits = [w.duration_ms for w in timeline.waits if name is None or w.waiter.group == name]
        return GroupStats(
            group=name or "all",
            kind=kinds.get(name, "") if name else "",
            workers=workers[name] if name else sum(workers.values()),
            calls=len(mine),
            commits=commits,
            rollbacks=rollbacks,
            errors=dict(sorted(errors.items())),
            busy_errors=sum(1 for c in mine if c.failed_busy),
            handler_calls=sum(c.busy_calls for c in mine),
            waits=WaitStats.of(waits),
            commits_per_second=commits / seconds if seconds > 0 else 0.0,
            crashes=tuple(crashes.get(name, []))
            if name
            else tuple(x for v in crashes.values() for x in v),
        )

    notes = []
    if timeline.reduced_detail:
        notes.append(
            "reduced detail: the probe's busy-handler hook could not be installed on some "
            "connections, so waits that did not fail are not seen there"
        )
    return RunSummary(
        groups=tuple(stats_for(g) for g in groups),
        total=stats_for(None),
        active_seconds=seconds,
        notes=tuple(notes),
    )
