"""What a recording did, counted in the same pass that builds the timeline: calls, failures,
rollbacks and busy-handler calls per group and worker (the summary's raw numbers, stats.py),
and the nearest-rank percentile both the summary and the evidence use."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlite_lockprobe.diagnose.model import SQLITE_BUSY, Actor
from sqlite_lockprobe.diagnose.statements import statement_kind
from sqlite_lockprobe.events.databases import DatabaseLog, journal_mode_set_by
from sqlite_lockprobe.events.resultcodes import code_name


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class CallCounts:
    """The calls of one group (or one worker). The timeline builder adds to `calls` and
    `handler_calls` itself (it sees every call), and calls `failed` or `rolled_back` for the
    few others."""

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

    def add(self, other: CallCounts) -> None:
        self.calls += other.calls
        self.errors.update(other.errors)
        self.busy_errors += other.busy_errors
        self.handler_calls += other.handler_calls
        self.rollbacks += other.rollbacks


def rolls_back(op: Any, statements: Any) -> bool:
    """A call that ended its transaction with ROLLBACK: a rollback() call, or one that ran a
    ROLLBACK statement (not ROLLBACK TO a savepoint); the timeline builder's rule."""
    if op == "rollback":
        return True
    for statement in statements or ():
        if (
            statement.lstrip(" \t\r\n(")[:1] in ("R", "r")
            and statement_kind(statement) == "rollback"
        ):
            return True
    return False


_COUNTED_FIELD_NAMES = ("conn", "worker", "busy", "err", "op", "sql")
_COUNTED_FIELDS = itemgetter(*_COUNTED_FIELD_NAMES)
_MAX_TEXTS = 50_000
_MAY_ROLL_BACK = "rollback?"


def _role(sql: Any) -> str:
    """_MAY_ROLL_BACK, the journal mode the SQL sets, or ''."""
    text = str(sql or "")
    if "ROLLBACK" in text.upper():
        return _MAY_ROLL_BACK
    return journal_mode_set_by(text) or ""


# The group shown for calls counted per connection whose `open` event named no group, when
# the events were not read through `ActivityCounter.attributing` (which counts them per worker).
UNATTRIBUTED = "(no worker)"


class ActivityCounter:
    """Counts what the summary needs in the timeline builder's one pass over the events
    (`build_timeline(events, activity)`), so no event has to be kept and no second pass runs:
    the builder adds each call to `counts_for` its connection's group and shows the counter
    every other event (`observe`).

    `run` names each connection's group when it opens it (one worker per connection). `trace`
    cannot: a connection may serve several threads or tasks (a pool), and aiosqlite opens each
    one on its driver thread. Its calls are counted per worker by `attributing`, a layer over
    the events that `analyze` adds, and summed per group when the worker events are all in."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}
        self.worker_groups: dict[str, str] = {}  # worker label -> its group (worker events)
        self.crashes: dict[str, list[str]] = {}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.events = 0
        self.meta: dict[str, Any] = {}
        self._members: dict[str, set[tuple[Any, str]]] = {}  # group -> {(pid, worker)}
        self._counts: dict[str, CallCounts] = {}  # per group named by the connection
        self._by_worker: dict[str, CallCounts] = {}  # per worker, for the other connections
        self._attributing = False
        self._superseded = CallCounts()  # the builder's count of what `attributing` counts
        self.databases = DatabaseLog()

    @property
    def workers(self) -> dict[str, int]:
        """How many workers (distinct process and label) each group has."""
        return {group: len(members) for group, members in self._members.items()}

    @property
    def groups(self) -> dict[str, CallCounts]:
        """The counts of each group that made calls."""
        merged: dict[str, CallCounts] = {}
        for group, counts in self._counts.items():
            if counts.calls:
                merged.setdefault(group or UNATTRIBUTED, CallCounts()).add(counts)
        for worker, counts in self._by_worker.items():
            merged.setdefault(self.group_of(worker), CallCounts()).add(counts)
        return merged

    def group_of(self, worker: str) -> str:
        """A worker's group, from its worker event (its own label if it had none)."""
        return self.worker_groups.get(worker) or worker

    def actor_group(self, actor: Actor) -> str:
        """The group of whoever made a call. The worker event wins over the actor's group,
        which the builder took from the events seen so far: a thread announces itself after
        its first call has ended, so that call was made before its worker event."""
        return self.worker_groups.get(actor.worker) or actor.group or actor.worker

    def counts_for(self, group: str) -> CallCounts:
        if not group and self._attributing:
            return self._superseded
        counts = self._counts.get(group)
        if counts is None:
            counts = self._counts[group] = CallCounts()
        return counts

    def attributing(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The events, unchanged, with each call on a connection whose `open` named no group
        (or that was opened before recording began) counted on the way for the worker that
        made it. A `run` log (its first event says so) names every connection's group: it is
        passed through as it is, as the layer costs a step per event (7 % of a long log's
        analysis)."""
        stream = iter(events)
        first = next(stream, None)
        if first is None:
            return stream
        stream = itertools.chain((first,), stream)
        if first["k"] == "meta" and str(first.get("source") or "").startswith("run "):
            return stream
        self._attributing = True
        return self._counting(stream)

    def _counting(self, events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        grouped: set[str] = set()
        by_worker = self._by_worker
        # What a call's SQL may do, by SQL text (the program's own, parameters not expanded):
        # end its transaction with ROLLBACK (then its statements are looked at), or set the
        # journal mode (to this mode).
        roles: dict[Any, str] = {}
        for event in events:
            kind = event["k"]
            if kind == "call":
                try:
                    conn, worker, busy, error, op, sql = _COUNTED_FIELDS(event)
                except KeyError:
                    conn, worker, busy, error, op, sql = map(event.get, _COUNTED_FIELD_NAMES)
                if conn in grouped:
                    yield event
                    continue
                counts = by_worker.get(worker or conn)
                if counts is None:
                    counts = by_worker[worker or conn] = CallCounts()
                counts.calls += 1
                if busy:
                    counts.handler_calls += int(busy)
                if error is not None:
                    counts.failed(error, event.get("ext") or error)
                    yield event
                    continue
                role = roles.get(sql)
                if role is None:
                    if len(roles) >= _MAX_TEXTS:
                        roles.clear()
                    role = roles[sql] = _role(sql)
                if role == _MAY_ROLL_BACK or op == "rollback":
                    if rolls_back(op, event.get("stmts")):
                        counts.rolled_back()
                elif role:
                    self.databases.set_mode(conn, role)
            elif kind == "open":
                if event.get("group"):
                    grouped.add(event["conn"])
                else:
                    grouped.discard(event["conn"])
            yield event

    def observe(self, event: dict[str, Any]) -> None:
        """An event other than a call."""
        kind = event["k"]
        if kind == "worker":
            group, worker = event["group"], event["worker"]
            self.kinds[group] = event.get("kind") or ""
            self.worker_groups[worker] = group
            self._members.setdefault(group, set()).add((event.get("pid"), worker))
        elif kind == "worker_end" and event.get("error"):
            worker = str(event["worker"])
            group = self.worker_groups.get(worker) or worker.split("#")[0]
            self.crashes.setdefault(group, []).append(f"{worker}: {event['error']}")
        elif kind == "open":
            self.databases.opened(event)
        elif kind == "meta":
            self.databases.meta(event)
            if not self.meta:
                self.meta = event
        elif kind == "wal":
            self.databases.wal_sample(event)

    def finish(self, events: int, first_ns: int | None, last_ns: int | None) -> None:
        """The pass is over: how many events it saw, and when the calls began and ended."""
        self.events = events
        self.first_ns = first_ns
        self.last_ns = last_ns
