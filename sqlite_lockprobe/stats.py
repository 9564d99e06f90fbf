"""The run summary: per worker group, what was done, what failed, and how long waits took."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.diagnose.model import SQLITE_BUSY, Timeline
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


@dataclass
class _GroupCounts:
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    busy_errors: int = 0
    handler_calls: int = 0
    rollbacks: int = 0


class ActivityCounter:
    """Counts what the summary needs while events stream past on their way to the timeline
    builder, so no event has to be kept: `build_timeline(counter.observe(events))`."""

    def __init__(self) -> None:
        self.groups: dict[str, _GroupCounts] = {}
        self.kinds: dict[str, str] = {}
        self.workers: Counter[str] = Counter()
        self.crashes: dict[str, list[str]] = {}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.events = 0
        self.meta: dict[str, Any] = {}
        self._group_of_conn: dict[str, str] = {}

    def observe(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            self.events += 1
            kind = event["k"]
            if kind == "call":
                self._call(event)
            elif kind == "open":
                self._group_of_conn[event["conn"]] = event.get("group") or ""
            elif kind == "worker":
                self.kinds[event["group"]] = event.get("kind") or ""
                self.workers[event["group"]] += 1
            elif kind == "worker_end" and event.get("error"):
                group = str(event["worker"]).split("#")[0]
                self.crashes.setdefault(group, []).append(f"{event['worker']}: {event['error']}")
            elif kind == "meta" and not self.meta:
                self.meta = event
            yield event

    def _call(self, event: dict[str, Any]) -> None:
        group = self._group_of_conn.get(event["conn"], "")
        counts = self.groups.get(group)
        if counts is None:
            counts = self.groups[group] = _GroupCounts()
        counts.calls += 1
        counts.handler_calls += event.get("busy") or 0
        err = event.get("err")
        if err is not None:
            counts.errors[code_name(event.get("ext") or err)] += 1
            if err == SQLITE_BUSY:
                counts.busy_errors += 1
        elif event.get("op") == "rollback" or any(
            statement_kind(s) == "rollback" for s in event.get("stmts") or ()
        ):
            counts.rollbacks += 1
        t0, t1 = event["t0"], event["t1"]
        if self.first_ns is None or t0 < self.first_ns:
            self.first_ns = t0
        if self.last_ns is None or t1 > self.last_ns:
            self.last_ns = t1


def summarize(timeline: Timeline, activity: ActivityCounter) -> RunSummary:
    """Per-group and total statistics from the timeline and the counted activity."""
    active_ns = (activity.last_ns or 0) - (activity.first_ns or 0)
    seconds = active_ns / 1e9
    groups = sorted(set(activity.groups) | set(activity.kinds))
    commits_by_group: Counter[str] = Counter(
        h.holder.group for h in timeline.write_holds if h.released_by in ("COMMIT", "autocommit")
    )

    def stats_for(name: str | None) -> GroupStats:
        chosen = [c for g, c in activity.groups.items() if name is None or g == name]
        errors: Counter[str] = Counter()
        for c in chosen:
            errors.update(c.errors)
        commits = commits_by_group[name] if name is not None else sum(commits_by_group.values())
        waits = [w.duration_ms for w in timeline.waits if name is None or w.waiter.group == name]
        crashes = (
            activity.crashes.get(name, [])
            if name
            else [x for v in activity.crashes.values() for x in v]
        )
        return GroupStats(
            group=name or "all",
            kind=activity.kinds.get(name, "") if name else "",
            workers=activity.workers[name] if name else sum(activity.workers.values()),
            calls=sum(c.calls for c in chosen),
            commits=commits,
            rollbacks=sum(c.rollbacks for c in chosen),
            errors=dict(sorted(errors.items())),
            busy_errors=sum(c.busy_errors for c in chosen),
            handler_calls=sum(c.handler_calls for c in chosen),
            waits=WaitStats.of(waits),
            commits_per_second=commits / seconds if seconds > 0 else 0.0,
            crashes=tuple(crashes),
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
