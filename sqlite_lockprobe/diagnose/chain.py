"""The wait-for chain behind one wait, told like InnoDB's "LATEST DETECTED DEADLOCK".

waiter -> the lock it waited for and who held it -> what that holder was itself waiting on,
until the chain reaches a holder that waits on nothing, or comes back to a connection already
in it (a cycle: a deadlock).
"""

from __future__ import annotations

from sqlite_lockprobe.diagnose.causes import overlap_ns
from sqlite_lockprobe.diagnose.evidence import (
    ConnWaits,
    at,
    hold_story,
    short_sql,
    wait_outcome,
)
from sqlite_lockprobe.diagnose.model import BusyWait, LockHold, Timeline

MAX_DEPTH = 4


def blockers(wait: BusyWait, timeline: Timeline) -> list[LockHold]:
    """Holds that could have blocked this wait, the one covering most of it first.

    A rollback-journal COMMIT needs EXCLUSIVE, which waits for every SHARED lock
    (lockingv3.html), so other connections' read transactions count for it; any other wait is
    for the single write lock."""
    t1 = max(wait.t1, wait.t0 + 1)
    holds = timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)
    if wait.phase == "commit" and not timeline.is_wal:
        holds = holds + timeline.read_holders_during(wait.t0, t1, wait.waiter.conn)
    return sorted(
        holds,
        key=lambda h: (-overlap_ns(h, wait.t0, t1), h.kind != "write", h.t0, h.holder.conn),
    )


def wait_for_chain(
    wait: BusyWait, timeline: Timeline, conn_waits: ConnWaits | None = None
) -> list[str]:
    """Lines describing who waited for whom, starting from `wait`."""
    index = conn_waits or ConnWaits(timeline.waits)
    origin = timeline.origin_ns
    lines: list[str] = []
    path = [wait.waiter]
    current = wait
    for step in range(1, MAX_DEPTH + 1):
        lines.append(f"*** ({step}) WAITER: {current.waiter.describe()}")
        lines.append(
            f"    `{short_sql(current.call.sql or current.call.op)}` ({current.phase}) at "
            f"{at(current.t0, origin)}: {wait_outcome(current)}"
        )
        found = blockers(current, timeline)
        if not found:
            lines.append(
                f"*** ({step}) WAITS FOR: a lock no recorded connection held "
                "(a process outside the recording?)"
            )
            return lines
        hold = found[0]
        lines.append(f"*** ({step}) WAITS FOR: {hold_story(hold, timeline, origin)}")
        if len(found) > 1:
            others = sorted({h.holder.conn for h in found[1:]} - {hold.holder.conn})
            if others:
                lines.append(f"    also held during the wait by: {', '.join(others)}")
        if hold.holder.same_thread_as(current.waiter):
            lines.append(
                "    the holder is driven by the waiter's own OS thread: it cannot run its "
                "COMMIT until this wait gives up"
            )
            return lines
        if any(a.conn == hold.holder.conn for a in path):
            cycle = " -> ".join(a.worker for a in [*path, hold.holder])
            lines.append(f"*** CYCLE: {cycle}: a deadlock; no busy_timeout can resolve it")
            return lines
        path.append(hold.holder)
        # What held the holder up: its own waits while it still held the lock.
        upstream = [
            w
            for w in index.during(hold.holder.conn, current.t0, hold.t1)
            if w is not current and w.t0 < hold.t1
        ]
        if not upstream:
            lines.append(
                f"    {hold.holder.worker} was not waiting on any lock: it was running "
                "statements or idle in the application"
            )
            return lines
        current = upstream[0]
    lines.append("    ... (chain continues)")
    return lines
