"""write-convoy: many short write transactions queue for the one write lock; some starve.

SQLite's busy handler is not a queue: the default one (main.c, sqliteDefaultBusyCallback)
sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between retries. A waiter that is
asleep when the lock is released loses it to whoever asks first, so under steady contention
some waiters keep losing until busy_timeout runs out, though no single holder held for long.
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import (
    claimed_before_long_write,
    dominant_holder,
    is_harmful,
    upgrade_second_halves,
)
from sqlite_lockprobe.diagnose.evidence import (
    fmt_ms,
    hold_story,
    is_reduced,
    percentile,
    wait_facts,
    wait_line,
    wait_order,
)
from sqlite_lockprobe.diagnose.model import BusyWait, LockHold, Timeline
from sqlite_lockprobe.findings import Finding

PATTERN = "write-convoy"
WORST_SHOWN = 3
HOLDERS_SHOWN = 5
# A wait "near the timeout" ended within the last 10% of its busy_timeout.
NEAR_TIMEOUT_FRACTION = 0.9


def detect(timeline: Timeline) -> list[Finding]:
    """One finding when waits timed out behind a stream of short holders."""
    halves = upgrade_second_halves(timeline)
    timed_out: list[tuple[BusyWait, list[str]]] = []
    for wait in timeline.waits:
        if not wait.failed or (wait.handler_calls == 0 and not _reduced(timeline, wait)):
            continue
        if claimed_before_long_write(wait, timeline, halves):
            continue
        if dominant_holder(wait, timeline) is not None:
            continue
        t1 = max(wait.t1, wait.t0 + 1)
        holders = timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)
        if not holders:
            continue  # nobody recorded held the lock: not a convoy of ours
        timed_out.append((wait, sorted({h.holder.conn for h in holders})))
    if not timed_out:
        return []
    origin = timeline.origin_ns
    timed_out.sort(key=lambda case: (-len(case[1]), *wait_order(case[0])))

    # The distribution covers the convoy's own waits: none that another pattern explains.
    queued = [
        w
        for w in timeline.waits
        if (w.handler_calls > 0 or w.failed)
        and not claimed_before_long_write(w, timeline, halves)
        and (not is_harmful(w) or dominant_holder(w, timeline) is None)
    ]
    durations = sorted(w.duration_ms for w in queued)
    near = sum(1 for w in queued if w.duration_ms >= NEAR_TIMEOUT_FRACTION * w.timeout_ms > 0)
    holder_counts = sorted(len(holders) for _, holders in timed_out)
    median_holders = holder_counts[(len(holder_counts) - 1) // 2]
    distinct = sorted({conn for _, holders in timed_out for conn in holders})
    p50, p95, p99 = (round(percentile(durations, p), 1) for p in (50, 95, 99))
    worst_max = round(durations[-1], 1) if durations else 0.0
    worst_wait, worst_holders = timed_out[0]

    evidence = [
        f"{len(timed_out)} wait{'s' if len(timed_out) != 1 else ''} ran out of busy_timeout "
        f"with no single long holder; {len(distinct)} distinct connections held the write lock "
        "during them",
        f"wait times over {len(durations)} busy waits: p50 {fmt_ms(p50)}, p95 {fmt_ms(p95)}, "
        f"p99 {fmt_ms(p99)}, max {fmt_ms(worst_max)}; {near} ended within 10% of their "
        "busy_timeout",
        f"the worst failed wait saw {len(worst_holders)} different holders come and go: "
        + wait_line(worst_wait, origin),
    ]
    t1 = max(worst_wait.t1, worst_wait.t0 + 1)
    worst_holds = timeline.write_holders_during(worst_wait.t0, t1, worst_wait.waiter.conn)
    longest_first = sorted(worst_holds, key=lambda h: (-(h.t1 - h.t0), h.t0, h.holder.conn))
    for hold in longest_first[:HOLDERS_SHOWN]:
        evidence.append("  holder: " + hold_story(hold, timeline, origin))
    for wait, conns in timed_out[1:WORST_SHOWN]:
        evidence.append(f"also ({len(conns)} holders): " + wait_line(wait, origin))
    starved = _starved_holds(timeline, distinct)
    if starved:
        worst_delay = max(h.scheduling_delay_ns for h in starved)
        evidence.append(
            f"{len(starved)} lock holder{'s' if len(starved) != 1 else ''} were themselves "
            f"kept waiting to run (up to {fmt_ms(worst_delay / 1_000_000)} between statements "
            "with no step of the workload in between): too many threads or tasks share one "
            "process, so even the connection holding the lock cannot get the CPU to commit"
        )
    confidence = "high" if median_holders >= 2 else "medium"
    if confidence == "medium":
        evidence.append(
            "most failed waits saw only one holder: the lock was free part of the time while "
            "the waiters slept in the busy handler (unfair retries), so confidence is medium"
        )
    if any(_reduced(timeline, w) for w, _ in timed_out):
        confidence = "medium"
        evidence.append("busy-handler calls were not recorded (reduced detail)")

    return [
        Finding(
            pattern=PATTERN,
            title="Writers queue for the write lock and some time out (write convoy)",
            severity="error",
            confidence=confidence,
            explanation=(
                "Many connections write in short transactions and all need SQLite's single "
                "write lock. SQLite's busy handler is a sleep-and-retry loop, not a queue: a "
                "waiter that is asleep when the lock frees up loses it to whoever asks first, "
                "so some waiters starve until busy_timeout runs out while others get through. "
                "No single transaction is to blame; the number of concurrent writers is. The "
                "more connections (hundreds of coroutines each with its own), the worse."
            ),
            evidence=tuple(evidence),
            advice=(
                advice.single_writer(),
                advice.synchronous_normal() if timeline.is_wal else advice.wal_mode(),
                advice.raise_busy_timeout_stopgap(max(10000, 2 * worst_wait.timeout_ms)),
            ),
            facts={
                "timed_out_waits": len(timed_out),
                "distinct_holders": len(distinct),
                "holders": distinct,
                "median_holders_per_failed_wait": median_holders,
                "wait_ms": {"p50": p50, "p95": p95, "p99": p99, "max": worst_max},
                "waits": len(durations),
                "near_timeout": near,
                "starved_holders": len(starved),
                "worst": wait_facts(worst_wait, origin),
            },
        )
    ]


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
