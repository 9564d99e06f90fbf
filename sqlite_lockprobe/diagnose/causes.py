"""Which pattern owns a wait: the thresholds and the precedence rules shared by all detectors.

Each harmful wait is reported once, under its true cause. A detector claims a wait only when no
pattern earlier in PRECEDENCE (registry.py) does, so every detector stays correct when run alone:

1. upgrade-deadlock: SQLite refused to wait (no busy-handler call) for a transaction that had
   already read; also the winner's COMMIT that then waits on the loser's SHARED lock.
2. self-deadlock: the holder is driven by the waiter's own OS thread; no timeout can help.
3. external-holder: no recorded connection held the lock, and the OS lock table named another
   process holding one that blocks this wait; nothing inside the workload can fix it.
4. no-busy-timeout: the waiter had (almost) no busy_timeout, so it failed at first contention.
5. reader-blocks-writer: rollback-journal COMMIT waiting for other connections' SHARED locks.
6. long-write-transaction: one holder held the write lock for most of the wait.
7. write-convoy: failed or long waits behind many short holders.
8. unexplained-busy: a failed or long wait none of the above claims: said so, never guessed.
table-locked (SQLITE_LOCKED), checkpoint-starvation (the -wal file) and network-filesystem
(where the file lives) are not about busy waits and overlap with nothing.

`cause_of` is these rules in one place; every wait detector reports the waits it gives its
pattern, so each failed or long wait is in exactly one finding.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_lockprobe.diagnose.evidence import ConnWaits, is_reduced
from sqlite_lockprobe.diagnose.model import (
    NS_PER_MS,
    SQLITE_BUSY_SNAPSHOT,
    BusyWait,
    LockHold,
    OsLock,
    OsLockSample,
    Timeline,
)
from sqlite_lockprobe.diagnose.registry import PRECEDENCE

# A wait that succeeded is a problem (a near-miss) once it used half its busy_timeout: the
# margin left before "database is locked" is then smaller than the wait itself. Measured
# (docs/patterns.md, "Near-misses"): healthy workloads' longest waits stay under a tenth of the
# timeout, while a convoy's moves by 0.2 to 0.3 of it from one run of the same load to the next.
LONG_WAIT_FRACTION = 0.5
# Below this busy_timeout, ordinary contention (one commit takes a few ms with fsync) fails.
TINY_TIMEOUT_MS = 50
# A self-deadlocked wait always runs to its full timeout; 80% leaves room for clock jitter.
SELF_DEADLOCK_FRACTION = 0.8
# Without busy-handler counts (reduced detail), a refusal shows as a failure that arrived in
# under a tenth of the timeout: the default busy handler keeps sleeping until the timeout.
REDUCED_REFUSAL_FRACTION = 0.1
# Phases in which a read transaction upgrades to a write one (DML, DDL).
UPGRADE_PHASES = ("write", "other")


def is_long_wait(wait: BusyWait) -> bool:
    """Succeeded or not, used at least half its busy_timeout: a near-miss when it succeeded."""
    return wait.timeout_ms > 0 and wait.duration_ms >= LONG_WAIT_FRACTION * wait.timeout_ms


def is_harmful(wait: BusyWait) -> bool:
    return wait.failed or is_long_wait(wait)


def is_refusal(wait: BusyWait, timeline: Timeline) -> bool:
    """A BUSY failure for which SQLite never called the busy handler although it had a timeout.

    btree.c (sqlite3BtreeBeginTrans) retries through the busy handler only while the connection
    has no transaction open (`pBt->inTransaction==TRANS_NONE`); pager.c (pager_wait_on_lock)
    invokes it for NO_LOCK->SHARED and RESERVED->EXCLUSIVE, never SHARED->RESERVED."""
    if not wait.failed:
        return False
    if wait.code == SQLITE_BUSY_SNAPSHOT:
        return True  # wal.c sqlite3WalBeginWriteTransaction: the snapshot is stale, never waits
    if wait.timeout_ms <= 0:
        return False  # with no timeout every failure looks like this: no-busy-timeout's case
    if is_reduced(timeline, wait.waiter.conn):
        return wait.duration_ms <= REDUCED_REFUSAL_FRACTION * wait.timeout_ms
    return wait.handler_calls == 0


def is_upgrade_refusal(wait: BusyWait, timeline: Timeline) -> bool:
    """The loser's half of an upgrade deadlock: a read transaction refused its first write."""
    if not is_refusal(wait, timeline):
        return False
    if wait.code == SQLITE_BUSY_SNAPSHOT:
        return True
    return wait.had_read and wait.phase in UPGRADE_PHASES


def read_hold_at(timeline: Timeline, conn: str, t: int) -> LockHold | None:
    """conn's read transaction open at moment t (its SHARED lock or WAL snapshot)."""
    for hold in timeline.read_holders_during(t, t + 1):
        if hold.holder.conn == conn:
            return hold
    return None


def upgrade_second_halves(
    timeline: Timeline, conn_waits: ConnWaits | None = None
) -> dict[int, tuple[BusyWait, BusyWait]]:
    """Rollback mode: the winners' COMMIT waits blocked by a refused loser's SHARED lock.

    Keyed by id() of the winner's commit wait: (loser's refused wait, winner's commit wait).
    The loser keeps SHARED until it rolls back (lockingv3.html: a failed RESERVED attempt does
    not drop SHARED), and the winner's COMMIT needs EXCLUSIVE, which waits for every SHARED."""
    if timeline.is_wal:
        return {}
    refusals = [w for w in timeline.waits if is_upgrade_refusal(w, timeline)]
    if not refusals:
        return {}
    index = conn_waits or ConnWaits(timeline.waits)
    halves: dict[int, tuple[BusyWait, BusyWait]] = {}
    for loser in refusals:
        shared = read_hold_at(timeline, loser.waiter.conn, loser.t0)
        if shared is None:
            continue
        winners = timeline.write_holders_during(
            loser.t0, max(loser.t1, loser.t0 + 1), loser.waiter.conn
        )
        for winner_hold in winners:
            start = max(shared.t0, winner_hold.t0)
            end = min(shared.t1, winner_hold.t1)
            for commit in index.during(winner_hold.holder.conn, start, end):
                if commit.phase == "commit" and is_harmful(commit):
                    halves.setdefault(id(commit), (loser, commit))
    return halves


def same_thread_blocker(wait: BusyWait, timeline: Timeline) -> LockHold | None:
    """The lock hold, if any, that the waiter's own OS thread must release: a self-deadlock.

    Only a hold still open when the wait ended counts (the thread could not have released it
    while blocked in sqlite3_step). For a rollback-mode COMMIT, a SHARED lock counts too."""
    if not (wait.failed or wait.duration_ms >= SELF_DEADLOCK_FRACTION * wait.timeout_ms):
        return None
    t1 = max(wait.t1, wait.t0 + 1)
    holds = timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)
    if wait.phase == "commit" and not timeline.is_wal:
        holds = holds + timeline.read_holders_during(wait.t0, t1, wait.waiter.conn)
    mine = [h for h in holds if h.holder.same_thread_as(wait.waiter) and h.t1 >= wait.t1]
    if not mine:
        return None
    return min(mine, key=lambda h: (0 if h.kind == "write" else 1, h.t0, h.holder.conn))


def is_tiny_timeout_failure(wait: BusyWait) -> bool:
    return wait.failed and wait.timeout_ms < TINY_TIMEOUT_MS


def blocking_readers(wait: BusyWait, timeline: Timeline) -> list[LockHold]:
    """Other connections' SHARED locks open during a rollback-mode COMMIT wait."""
    if timeline.is_wal or wait.phase != "commit":
        return []
    return timeline.read_holders_during(wait.t0, max(wait.t1, wait.t0 + 1), wait.waiter.conn)


def overlap_ns(hold: LockHold, t0: int, t1: int) -> int:
    return max(0, min(hold.t1, t1) - max(hold.t0, t0))


# A hold is the one long holder behind a wait when it covered at least half of the wait and
# itself lasted at least half the waiter's busy_timeout (and 100 ms).
DOMINANT_OVERLAP_FRACTION = 0.5
LONG_HOLD_FRACTION = 0.5


def dominant_holder(wait: BusyWait, timeline: Timeline) -> LockHold | None:
    """The single write hold that explains most of this wait, if there is one."""
    t1 = max(wait.t1, wait.t0 + 1)
    holds = timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)
    if not holds:
        return None
    best = min(holds, key=lambda h: (-overlap_ns(h, wait.t0, t1), h.t0, h.holder.conn))
    long_enough = LONG_HOLD_FRACTION * wait.timeout_ms * NS_PER_MS
    covers = overlap_ns(best, wait.t0, t1) >= DOMINANT_OVERLAP_FRACTION * (t1 - wait.t0)
    # Only time the holder itself spent counts: a hold stretched by scheduling delay (its
    # worker waiting for the GIL or a busy event loop) is a symptom of overload, not a long
    # transaction in the application's code.
    if covers and best.explained_ns >= long_enough:
        return best
    return None


# Locks that make a waiter wait, by what it needs (lockingv3.html; wal.c walLockExclusive):
# a writer needs RESERVED (rollback) or WAL_WRITE_LOCK (WAL); a rollback-mode COMMIT (and an
# autocommit write, which commits at its end) needs EXCLUSIVE, which every SHARED lock blocks;
# PENDING and EXCLUSIVE keep new readers out; WAL recovery holds everyone off.
_BLOCK_WRITERS = frozenset({"RESERVED", "PENDING", "EXCLUSIVE", "WAL_WRITE_LOCK"})
_BLOCK_READERS = frozenset({"PENDING", "EXCLUSIVE", "WAL_RECOVER_LOCK"})
_COMMITTING_PHASES = ("commit", "write", "other")


def blocks(lock: OsLock, wait: BusyWait, timeline: Timeline) -> bool:
    """Whether a lock held by another process can be what this wait waited for."""
    if lock.name in _BLOCK_READERS and lock.kind == "write":
        return True
    if wait.phase == "read":
        return False
    if lock.name in _BLOCK_WRITERS and lock.kind == "write":
        return True
    return lock.name == "SHARED" and not timeline.is_wal and wait.phase in _COMMITTING_PHASES


def external_blockers(wait: BusyWait, timeline: Timeline) -> list[tuple[OsLockSample, OsLock]]:
    """Locks held by processes outside the workload that blocked this wait, sample by sample.

    A sample counts only when no recorded connection held the write lock at that moment (for
    a SHARED blocker: no recorded read transaction either): then the recorded holders cannot
    explain the wait. A pid equal to a recorded process's is "one of ours" (POSIX locks are
    per process, so its connections are indistinguishable from each other): never blamed."""
    found: list[tuple[OsLockSample, OsLock]] = []
    for sample in timeline.os_samples_of(wait):
        outside = [
            lock
            for lock in sample.locks
            if lock.pid is not None
            and lock.pid not in timeline.recorded_pids
            and blocks(lock, wait, timeline)
        ]
        if not outside:
            continue
        t = min(sample.t, max(wait.t1, wait.t0 + 1) - 1)
        if timeline.write_holders_during(t, t + 1, wait.waiter.conn):
            continue
        if all(lock.name == "SHARED" for lock in outside) and timeline.read_holders_during(
            t, t + 1, wait.waiter.conn
        ):
            continue
        found.extend((sample, lock) for lock in outside)
    return found


def convoy_holders(wait: BusyWait, timeline: Timeline) -> list[str]:
    """The connections that held the write lock during a wait that met the busy handler
    (or failed under reduced detail): a queue of ours, when there are any."""
    if wait.handler_calls == 0 and not is_reduced(timeline, wait.waiter.conn):
        return []
    t1 = max(wait.t1, wait.t0 + 1)
    return sorted(
        {h.holder.conn for h in timeline.write_holders_during(wait.t0, t1, wait.waiter.conn)}
    )


SecondHalves = dict[int, tuple[BusyWait, BusyWait]]
Claim = Callable[[BusyWait, Timeline, SecondHalves], bool]

# What makes a wait a pattern's, for the patterns that claim waits; tried in PRECEDENCE order
# and the first that claims the wait owns it. A wait that is neither failed nor long is only
# a problem for the first four (a refusal, a self-deadlock, an outside holder, no timeout).
CLAIMS: dict[str, Claim] = {
    "upgrade-deadlock": lambda w, tl, halves: is_upgrade_refusal(w, tl) or id(w) in halves,
    "self-deadlock": lambda w, tl, _: same_thread_blocker(w, tl) is not None,
    "external-holder": lambda w, tl, _: bool(external_blockers(w, tl)),
    "no-busy-timeout": lambda w, _tl, _h: is_tiny_timeout_failure(w),
    "reader-blocks-writer": lambda w, tl, _: is_harmful(w) and bool(blocking_readers(w, tl)),
    "long-write-transaction": lambda w, tl, _: is_harmful(w) and dominant_holder(w, tl) is not None,
    "write-convoy": lambda w, tl, _: is_harmful(w) and bool(convoy_holders(w, tl)),
}
CLAIM_ORDER: tuple[tuple[str, Claim], ...] = tuple(
    (pattern, CLAIMS[pattern]) for pattern in PRECEDENCE if pattern in CLAIMS
)
if len(CLAIM_ORDER) != len(CLAIMS):  # a claim for an id the registry does not list
    raise LookupError(f"unregistered patterns in CLAIMS: {sorted(set(CLAIMS) - set(PRECEDENCE))}")


def cause_of(wait: BusyWait, timeline: Timeline, second_halves: SecondHalves) -> str | None:
    """The pattern that owns this wait, by PRECEDENCE; None for a momentary wait that is no
    problem, and for a failed or long one no pattern explains (unexplained-busy's)."""
    for pattern, claims in CLAIM_ORDER:
        if claims(wait, timeline, second_halves):
            return pattern
    return None


def wait_causes(timeline: Timeline) -> dict[int, str | None]:
    """cause_of for every wait, by id(wait): worked out once per timeline for all detectors."""

    def compute() -> dict[int, str | None]:
        halves = upgrade_second_halves(timeline)
        return {id(w): cause_of(w, timeline, halves) for w in timeline.waits}

    return timeline.memo("wait_causes", compute)


def waits_of(pattern: str, timeline: Timeline) -> list[BusyWait]:
    """The waits this pattern owns, in the timeline's order."""
    causes = wait_causes(timeline)
    return [w for w in timeline.waits if causes[id(w)] == pattern]


def unexplained(timeline: Timeline) -> list[BusyWait]:
    """Failed or long waits no pattern explains."""
    causes = wait_causes(timeline)
    return [w for w in timeline.waits if causes[id(w)] is None and is_harmful(w)]
