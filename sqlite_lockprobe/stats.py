"""The run summary: per worker group, what was done, what failed, and how long waits took."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.diagnose.model import SQLITE_BUSY, Timeline
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


@dataclass(slots=True)
class CallCounts:
    """The calls of one group. The timeline builder adds to `calls` and `handler_calls`
    itself (it sees every call), and calls `failed` or `rolled_back` for the few others."""

    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    busy_errors: int = 0
    handler_calls: int = 0
    rollbacks: int = 0

    def failed(self, error: Any, code: Any) -> None:
        """A call failed with primary result code `error` (`code`: the extended one if any)."""
        self.errors[code_name(code)] += 1
        if error == SQLITE_BUSY:
            self.busy_errors += 1

    def rolled_back(self) -> None:
        self.rollbacks += 1


class ActivityCounter:
    """Counts what the summary needs in the timeline builder's one pass over the events
    (`build_timeline(events, activity)`), so no event has to be kept and no second pass or
    generator layer runs per event: the builder adds each call to `counts_for` its group and
    shows the counter every other event (`observe`)."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.workers: Counter[str] = Counter()
        self.crashes: dict[str, list[str]] = {}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.events = 0
        self.meta: dict[str, Any] = {}
        self._counts: dict[str, CallCounts] = {}

    @property
    def groups(self) -> dict[str, CallCounts]:
        """The counts of each group that made calls."""
        return {group: counts for group, counts in self._counts.items() if counts.calls}

    def counts_for(self, group: str) -> CallCounts:
        counts = self._counts.get(group)
        if counts is None:
            counts = self._counts[group] = CallCounts()
        return counts

    def observe(self, event: dict[str, Any]) -> None:
        """An event other than a call."""
        kind = event["k"]
        if kind == "worker":
            self.kinds[event["group"]] = event.get("kind") or ""
            self.workers[event["group"]] += 1
        elif kind == "worker_end" and event.get("error"):
            group = str(event["worker"]).split("#")[0]
            self.crashes.setdefault(group, []).append(f"{event['worker']}: {event['error']}")
        elif kind == "meta" and not self.meta:
            self.meta = event

    def finish(self, events: int, first_ns: int | None, last_ns: int | None) -> None:
        """The pass is over: how many events it saw, and when the calls began and ended."""
        self.events = events
        self.first_ns = first_ns
        self.last_ns = last_ns


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
