"""write-convoy: many short write transactions queue for the one write lock; some starve.

SQLite's busy handler is not a queue: the default one (main.c, sqliteDefaultBusyCallback)
sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between retries. A waiter that is
asleep when the lock is released loses it to whoever asks first, so under steady contention
some waiters keep losing until busy_timeout runs out, though no single holder held for long.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.activity import percentile
from sqlite_lockprobe.diagnose.causes import convoy_holders, wait_causes, waits_of
from sqlite_lockprobe.diagnose.evidence import (
    NearMiss,
    fmt_ms,
    hold_story,
    is_reduced,
    near_miss,
    wait_facts,
    wait_line,
    wait_order,
)
from sqlite_lockprobe.diagnose.model import BusyWait, LockHold, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
HOLDERS_SHOWN = 5
# A wait "near the timeout" ended within the last 10% of its busy_timeout.
NEAR_TIMEOUT_FRACTION = 0.9


Case = tuple[BusyWait, list[str]]  # a convoy wait and the connections that held meanwhile


@dataclass(frozen=True)
class _Convoy:
    """The numbers of one convoy: its waits (worst first) and their distribution."""

    cases: list[Case]
    timed_out: list[Case]
    durations: list[float]  # every queued wait of the convoy's, ascending
    near: int
    median_holders: int
    distinct: list[str]
    wait_ms: dict[str, float]
    starved: list[LockHold]


def detect(timeline: Timeline) -> list[Finding]:
    """One finding when waits timed out, or came close to it (used half their busy_timeout),
    behind a stream of short holders."""
    cases = [(w, convoy_holders(w, timeline)) for w in waits_of(PATTERN, timeline)]
    if not cases:
        return []
    cases.sort(key=lambda case: (not case[0].failed, -len(case[1]), *wait_order(case[0])))
    return [_finding(timeline, _convoy(timeline, cases))]


def _convoy(timeline: Timeline, cases: list[Case]) -> _Convoy:
    timed_out = [case for case in cases if case[0].failed]
    # The distribution covers the convoy's own waits: none that another pattern explains.
    causes = wait_causes(timeline)
    queued = [
        w
        for w in timeline.waits
        if (w.handler_calls > 0 or w.failed) and causes[id(w)] in (None, PATTERN)
    ]
    durations = sorted(w.duration_ms for w in queued)
    holder_counts = sorted(len(holders) for _, holders in timed_out or cases)
    distinct = sorted({conn for _, holders in cases for conn in holders})
    wait_ms = {f"p{p}": round(percentile(durations, p), 1) for p in (50, 95, 99)}
    wait_ms["max"] = round(durations[-1], 1) if durations else 0.0
    return _Convoy(
        cases=cases,
        timed_out=timed_out,
        durations=durations,
        near=sum(1 for w in queued if w.duration_ms >= NEAR_TIMEOUT_FRACTION * w.timeout_ms > 0),
        median_holders=holder_counts[(len(holder_counts) - 1) // 2],
        distinct=distinct,
        wait_ms=wait_ms,
        starved=_starved_holds(timeline, distinct),
    )


def _evidence(timeline: Timeline, convoy: _Convoy, missed: NearMiss | None) -> list[str]:
    origin = timeline.origin_ns
    cases, timed_out, ms = convoy.cases, convoy.timed_out, convoy.wait_ms
    if timed_out:
        what = (
            f"{len(timed_out)} wait{'s' if len(timed_out) != 1 else ''} ran out of "
            "busy_timeout with no single long holder"
        )
        if len(cases) > len(timed_out):
            what += f" ({len(cases) - len(timed_out)} more used over half of it)"
    else:
        what = (
            f"no wait failed, but {len(cases)} wait{'s' if len(cases) != 1 else ''} used over "
            "half of their busy_timeout with no single long holder (a near-miss)"
        )
    evidence = [
        f"{what}; {len(convoy.distinct)} distinct connections held the write lock during them",
        f"wait times over {len(convoy.durations)} busy waits: p50 {fmt_ms(ms['p50'])}, "
        f"p95 {fmt_ms(ms['p95'])}, p99 {fmt_ms(ms['p99'])}, max {fmt_ms(ms['max'])}; "
        f"{convoy.near} ended within 10% of their busy_timeout",
    ]
    if missed is not None:
        evidence.append(missed.line)
    worst_wait, worst_holders = cases[0]
    evidence.append(
        f"the worst {'failed ' if worst_wait.failed else ''}wait saw {len(worst_holders)} "
        "different holders come and go: " + wait_line(worst_wait, origin)
    )
    t1 = max(worst_wait.t1, worst_wait.t0 + 1)
    worst_holds = timeline.write_holders_during(worst_wait.t0, t1, worst_wait.waiter.conn)
    longest_first = sorted(worst_holds, key=lambda h: (-(h.t1 - h.t0), h.t0, h.holder.conn))
    for hold in longest_first[:HOLDERS_SHOWN]:
        evidence.append("  holder: " + hold_story(hold, timeline, origin))
    for wait, conns in cases[1:WORST_SHOWN]:
        evidence.append(f"also ({len(conns)} holders): " + wait_line(wait, origin))
    if convoy.starved:
        worst_delay = max(h.scheduling_delay_ns for h in convoy.starved)
        evidence.append(
            f"{len(convoy.starved)} lock holder{'s' if len(convoy.starved) != 1 else ''} were "
            f"themselves kept waiting to run (up to {fmt_ms(worst_delay / 1_000_000)} between "
            "statements with no step of the workload in between): too many threads or tasks "
            "share one process, so even the connection holding the lock cannot get the CPU "
            "to commit"
        )
    return evidence


def _confidence(timeline: Timeline, convoy: _Convoy, evidence: list[str]) -> str:
    """high when most waits saw a queue; the reasons for less are added to the evidence."""
    confidence = "high" if convoy.median_holders >= 2 else "medium"
    if confidence == "medium":
        evidence.append(
            f"most {'failed' if convoy.timed_out else 'long'} waits saw only one holder: the "
            "lock was free part of the time while the waiters slept in the busy handler "
            "(unfair retries), so confidence is medium"
        )
    if any(_reduced(timeline, w) for w, _ in convoy.cases):
        confidence = "medium"
        evidence.append("busy-handler calls were not recorded (reduced detail)")
    return confidence


def _finding(timeline: Timeline, convoy: _Convoy) -> Finding:
    missed = near_miss([w for w, _ in convoy.cases])
    evidence = _evidence(timeline, convoy, missed)
    confidence = _confidence(timeline, convoy, evidence)
    timed_out, worst_wait = bool(convoy.timed_out), convoy.cases[0][0]
    facts: dict[str, object] = {
        "timed_out_waits": len(convoy.timed_out),
        "long_waits": len(convoy.cases) - len(convoy.timed_out),
        "distinct_holders": len(convoy.distinct),
        "holders": convoy.distinct,
        "median_holders_per_failed_wait": convoy.median_holders,
        "wait_ms": convoy.wait_ms,
        "waits": len(convoy.durations),
        "near_timeout": convoy.near,
        "starved_holders": len(convoy.starved),
        "worst": wait_facts(worst_wait, timeline.origin_ns),
    }
    if missed is not None:
        facts["near_miss"] = missed.facts
    return Finding(
        pattern=PATTERN,
        title=(
            "Writers queue for the write lock and some time out (write convoy)"
            if timed_out
            else "Writers queue for the write lock and came close to timing out "
            "(write convoy, near-miss)"
        ),
        severity="error" if timed_out else "warning",
        confidence=confidence,
        explanation=(
            "Many connections write in short transactions and all need SQLite's single "
            "write lock. SQLite's busy handler is a sleep-and-retry loop, not a queue: a "
            "waiter that is asleep when the lock frees up loses it to whoever asks first, "
            "so some waiters starve until busy_timeout runs out while others get through. "
            "No single transaction is to blame; the number of concurrent writers is. The "
            "more connections (hundreds of coroutines each with its own), the worse."
            + (
                ""
                if timed_out
                else " Nothing failed this time, but the longest waits used most of the "
                "busy_timeout: a little more load or a slower disk and they fail with "
                '"database is locked".'
            )
        ),
        evidence=tuple(evidence),
        advice=(
            advice.single_writer(),
            advice.synchronous_normal() if timeline.is_wal else advice.wal_mode(),
            advice.raise_busy_timeout_stopgap(max(10000, 2 * worst_wait.timeout_ms)),
        ),
        facts=facts,
    )


def _starved_holds(timeline: Timeline, conns: list[str]) -> list[LockHold]:
    """Holds of these connections stretched mostly by scheduling delay."""
    wanted = set(conns)
    return [
        h
        for h in timeline.write_holds
        if h.holder.conn in wanted and h.scheduling_delay_ns * 2 > (h.t1 - h.t0)
    ]


def _reduced(timeline: Timeline, wait: BusyWait) -> bool:
    return is_reduced(timeline, wait.waiter.conn)
