"""upgrade-deadlock: a DEFERRED transaction read, then tried to write, and SQLite refused to wait.

Rollback-journal mode: the reader holds SHARED and wants RESERVED while another connection
holds RESERVED (and will need EXCLUSIVE, i.e. this SHARED gone, to commit). btree.c
(sqlite3BtreeBeginTrans) calls the busy handler only while no transaction is open, so the write
fails with SQLITE_BUSY at once. WAL mode: wal.c (sqlite3WalBeginWriteTransaction) returns
SQLITE_BUSY_SNAPSHOT (517) when another connection committed after this snapshot began, and
plain SQLITE_BUSY, also without waiting, while another writer holds the WAL write lock.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.causes import (
    is_upgrade_refusal,
    read_hold_at,
    upgrade_second_halves,
)
from sqlite_lockprobe.diagnose.chain import wait_for_chain
from sqlite_lockprobe.diagnose.evidence import (
    ConnWaits,
    at,
    code_name,
    fmt_ms,
    hold_story,
    is_reduced,
    ms,
    wait_facts,
    wait_line,
)
from sqlite_lockprobe.diagnose.model import SQLITE_BUSY_SNAPSHOT, BusyWait, LockHold, Timeline
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3
# Looking back for the committer that made a snapshot stale: the latest few suffice.
COMMITTER_LOOKBACK = 1000


@dataclass(frozen=True)
class _Refusals:
    """The refused upgrades (losers, worst first) and the winners' COMMITs they made wait."""

    losers: list[BusyWait]
    victims_of: dict[int, list[BusyWait]]  # by id() of the loser
    victim_waits: list[BusyWait]  # every winner's COMMIT wait, in time order
    conn_waits: ConnWaits

    @property
    def snapshot(self) -> list[BusyWait]:
        return [w for w in self.losers if w.code == SQLITE_BUSY_SNAPSHOT]

    def judged(self, timeline: Timeline) -> list[BusyWait]:
        """Refusals told without busy-handler counts (reduced detail)."""
        return [
            w
            for w in self.losers
            if w.code != SQLITE_BUSY_SNAPSHOT and is_reduced(timeline, w.waiter.conn)
        ]

    @property
    def codes(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for w in self.losers:
            counted[code_name(w.code)] = counted.get(code_name(w.code), 0) + 1
        return dict(sorted(counted.items()))


def detect(timeline: Timeline) -> list[Finding]:
    """One finding for all refused read-to-write upgrades, worst (with a victim COMMIT) first."""
    refusals = _refusals(timeline)
    if refusals is None:
        return []
    return [_finding(timeline, refusals)]


def _refusals(timeline: Timeline) -> _Refusals | None:
    losers = [w for w in timeline.waits if is_upgrade_refusal(w, timeline)]
    if not losers:
        return None
    conn_waits = ConnWaits(timeline.waits)
    halves = upgrade_second_halves(timeline, conn_waits)
    victims_of: dict[int, list[BusyWait]] = {}
    for loser, commit in halves.values():
        victims_of.setdefault(id(loser), []).append(commit)
    for victims in victims_of.values():
        victims.sort(key=lambda w: (w.t0, w.waiter.conn))
    losers.sort(key=lambda w: (-len(victims_of.get(id(w), ())), w.t0, w.waiter.conn))
    victim_waits = sorted(
        (commit for _, commit in halves.values()), key=lambda w: (w.t0, w.waiter.conn)
    )
    return _Refusals(losers, victims_of, victim_waits, conn_waits)


def _evidence(timeline: Timeline, refusals: _Refusals, judged: list[BusyWait]) -> list[str]:
    origin, losers, victim_waits = timeline.origin_ns, refusals.losers, refusals.victim_waits
    evidence = [
        f"{len(losers)} write{'s' if len(losers) != 1 else ''} in transactions that had already "
        f"read failed without waiting: "
        + ", ".join(f"{n} x {name}" for name, n in sorted(refusals.codes.items())),
        "busy_timeout cannot help: SQLite did not call the busy handler for these "
        f"(timeouts of {_timeouts(losers)} ms were set)",
    ]
    if victim_waits:
        evidence.append(
            f"second half: {len(victim_waits)} COMMIT{'s' if len(victim_waits) != 1 else ''} "
            f"of the winning connection then waited for the loser's SHARED lock "
            f"({sum(w.failed for w in victim_waits)} failed)"
        )
    ends = _commit_ends(timeline)
    for loser in losers[:WORST_SHOWN]:
        evidence.append("loser: " + wait_line(loser, origin))
        evidence.extend(_why_lines(loser, timeline, origin, ends))
        for commit in refusals.victims_of.get(id(loser), [])[:WORST_SHOWN]:
            evidence.append("winner's COMMIT then: " + wait_line(commit, origin))
    if judged:
        evidence.append(
            f"{len(judged)} of these were judged without busy-handler counts (reduced detail): "
            "from failures that arrived in under a tenth of the busy_timeout"
        )
    return evidence


def _finding(timeline: Timeline, refusals: _Refusals) -> Finding:
    losers, victim_waits = refusals.losers, refusals.victim_waits
    judged = refusals.judged(timeline)
    evidence = _evidence(timeline, refusals, judged)
    worst = losers[0]
    chain = wait_for_chain(worst, timeline, refusals.conn_waits)
    evidence.append("wait-for chain:")
    evidence.extend(chain)
    return Finding(
        pattern=PATTERN,
        title="Read-then-write transactions fail at once (upgrade deadlock)",
        severity="error",
        confidence="medium" if len(judged) * 2 > len(losers) else "high",
        explanation=_explanation(timeline, bool(refusals.snapshot), bool(victim_waits)),
        evidence=tuple(evidence),
        advice=(advice.begin_immediate(),),
        facts={
            "refused_writes": len(losers),
            "codes": refusals.codes,
            "busy_snapshot": len(refusals.snapshot),
            "judged_without_handler_counts": len(judged),
            "winner_commit_waits": len(victim_waits),
            "winner_commit_failures": sum(w.failed for w in victim_waits),
            "losers": sorted({w.waiter.conn for w in losers}),
            "winners": sorted({w.waiter.conn for w in victim_waits}),
            "worst": wait_facts(worst, timeline.origin_ns),
            "chain": chain,
        },
    )


def _timeouts(waits: list[BusyWait]) -> str:
    return "/".join(str(t) for t in sorted({w.timeout_ms for w in waits}))


def _commit_ends(timeline: Timeline) -> tuple[list[int], list[LockHold]]:
    """Write holds ended by COMMIT, sorted by end: who changed the database, and when."""
    commits = sorted(
        (h for h in timeline.write_holds if h.released_by == "COMMIT"),
        key=lambda h: (h.t1, h.holder.conn),
    )
    return [h.t1 for h in commits], commits


def _why_lines(
    loser: BusyWait,
    timeline: Timeline,
    origin: int,
    ends: tuple[list[int], list[LockHold]],
) -> list[str]:
    """Who the loser lost to: the committer after its snapshot, or the current write holder."""
    shared = read_hold_at(timeline, loser.waiter.conn, loser.t0)
    lines: list[str] = []
    if shared is not None:
        lines.append(
            f"  its read transaction began at {at(shared.t0, origin)} with "
            f"`{shared.taken_by}` and ended by {shared.released_by} after "
            f"{fmt_ms(ms(shared.t1 - shared.t0))}"
        )
    if loser.code == SQLITE_BUSY_SNAPSHOT:
        committer = _last_committer(loser, shared, ends)
        if committer is None:
            lines.append(
                "  the connection that committed after this snapshot was not recorded "
                "(another process?)"
            )
        else:
            lines.append(
                f"  stale snapshot: {committer.holder.describe()} committed at "
                f"{at(committer.t1, origin)}, after this snapshot began"
            )
        return lines
    holders = timeline.write_holders_during(
        loser.t0, max(loser.t1, loser.t0 + 1), loser.waiter.conn
    )
    for hold in holders[:WORST_SHOWN]:
        lines.append("  winner: " + hold_story(hold, timeline, origin))
    if not holders:
        lines.append("  the write-lock holder was not recorded (another process?)")
    return lines


def _last_committer(
    loser: BusyWait, shared: LockHold | None, ends: tuple[list[int], list[LockHold]]
) -> LockHold | None:
    starts_at = shared.t0 if shared is not None else None
    end_times, commits = ends
    i = bisect_right(end_times, loser.t0) - 1
    for _ in range(COMMITTER_LOOKBACK):
        if i < 0:
            return None
        hold = commits[i]
        if starts_at is not None and hold.t1 <= starts_at:
            return None
        if hold.holder.conn != loser.waiter.conn:
            return hold
        i -= 1
    return None


def _explanation(timeline: Timeline, snapshot: bool, second_half: bool) -> str:
    if timeline.is_wal or snapshot:
        text = (
            "A transaction started DEFERRED, read (taking a WAL read snapshot), then tried to "
            "write. Another connection had committed after that snapshot began "
            "(SQLITE_BUSY_SNAPSHOT, 517) or was writing at that moment, and writing on top of "
            "an out-of-date snapshot is impossible, so SQLite failed the write at once without "
            "calling the busy handler."
        )
    else:
        text = (
            "A transaction started DEFERRED, read (taking a SHARED lock), then tried to write "
            "while another connection held RESERVED. The other connection must see every "
            "SHARED lock gone before it can commit, so waiting could never succeed: SQLite "
            "returned SQLITE_BUSY at once without calling the busy handler."
        )
        if second_half:
            text += (
                " The failed transaction stayed open and kept its SHARED lock until it rolled "
                "back, so the winner's COMMIT then waited for it, and failed too when that "
                "took longer than its busy_timeout."
            )
    return text + (
        " Raising busy_timeout does not help. Start such transactions with BEGIN IMMEDIATE, "
        "or retry the whole transaction, never the failed statement."
    )
