"""Which moment of a run to draw: the worst busy wait (the longest failed one, else the
longest), the holds that blocked it, and the connections involved. Shared by the terminal
timeline and the HTML report, so both show the same window."""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_lockprobe.diagnose.chain import blockers
from sqlite_lockprobe.diagnose.evidence import code_name
from sqlite_lockprobe.diagnose.model import NS_PER_MS, BusyWait, LockHold, Timeline

MAX_ROWS = 8
MAX_HOLDERS = 3


@dataclass(frozen=True)
class WorstWindow:
    """The window in monotonic ns; `roles` maps each connection shown, in row order, to
    "waiter" (the worst wait's), "holder" (of the lock it waited for) or "waited" (another
    waiter in the window); `workers` names each connection's worker."""

    worst: BusyWait
    holds: tuple[LockHold, ...]
    start_ns: int
    end_ns: int
    roles: dict[str, str]
    workers: dict[str, str]
    origin_ns: int

    @property
    def start_ms(self) -> float:
        return (self.start_ns - self.origin_ns) / NS_PER_MS

    @property
    def end_ms(self) -> float:
        return (self.end_ns - self.origin_ns) / NS_PER_MS

    @property
    def title(self) -> str:
        w = self.worst
        outcome = f"failed with {code_name(w.code)}" if w.failed else "waited"
        return (
            f"Worst wait: {self.workers.get(w.waiter.conn, w.waiter.conn)} ({w.waiter.conn}) "
            f"{outcome} after {w.duration_ms:,.1f} ms in {w.phase}"
        )


def choose_window(timeline: Timeline, max_rows: int = MAX_ROWS) -> WorstWindow | None:
    """The window around the worst wait, or None when nothing waited."""
    if not timeline.waits:
        return None
    worst = max(timeline.waits, key=lambda w: (w.failed, w.t1 - w.t0, -w.t0))
    holds = tuple(blockers(worst, timeline)[:MAX_HOLDERS])
    t0 = min([worst.t0, *(h.t0 for h in holds)])
    t1 = max([worst.t1, *(h.t1 for h in holds)])
    pad = max((t1 - t0) // 20, 1000)
    start, end = max(timeline.origin_ns, t0 - pad), t1 + pad
    roles: dict[str, str] = {worst.waiter.conn: "waiter"}
    for h in holds:
        roles.setdefault(h.holder.conn, "holder")
    for w in timeline.waits:
        if len(roles) >= max_rows:
            break
        if w.t0 < end and start < w.t1:
            roles.setdefault(w.waiter.conn, "waited")
    # A connection can serve several workers (a pool's, one shared by threads): in this
    # window it is named after the worker that waited or held here, not its last caller.
    names = worker_names(timeline)
    names[worst.waiter.conn] = worst.waiter.worker
    for h in holds:
        names[h.holder.conn] = h.holder.worker
    return WorstWindow(worst, holds, start, end, roles, names, timeline.origin_ns)


def worker_names(timeline: Timeline) -> dict[str, str]:
    """Each connection's worker name."""
    names = {c.actor.conn: c.actor.worker for c in timeline.calls}
    for h in (*timeline.write_holds, *timeline.read_holds):
        names.setdefault(h.holder.conn, h.holder.worker)
    return names


def fit_name(name: str, width: int) -> str:
    """Shorten in the middle, keeping a worker's `#N` suffix that tells workers apart."""
    if len(name) <= width:
        return name
    head, sep, tail = name.rpartition("#")
    suffix = f"{sep}{tail}" if head and len(tail) < width // 2 else ""
    return name[: width - 1 - len(suffix)] + "…" + suffix
