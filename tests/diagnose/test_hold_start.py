"""A hold starts when the lock is granted, not when the statement that took it began.

A statement that waited in the busy handler held nothing while it waited: its lock was granted
at its last retry (the busy events carry the times). Counting its hold from the statement's
start made a reader that was itself waiting look like the holder a COMMIT waited for."""

from __future__ import annotations

from sqlite_lockprobe.diagnose.chain import blockers, wait_for_chain
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.evidence import hold_story

from .eventlog import EventLog, ns

# SQLite's default busy handler sleeps 1, 2, 5, 10, 15, 20 ms... (main.c): the retries of a
# wait that began at `start`, as (time of the busy-handler call, its sleep).
SCHEDULE = (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50)


def retries(start: float, count: int) -> list[tuple[float, float]]:
    found, t = [], start
    for delay in SCHEDULE[:count]:
        found.append((t, delay))
        t += delay
    return found


def reader_behind_pending() -> EventLog:
    """Rollback journal. w's COMMIT (10 to 130 ms) waits for r1's SHARED lock (r1 reads from 5
    ms, commits at 129 ms), holding PENDING meanwhile. r2's SELECT starts at 50 ms and waits in
    the busy handler behind that PENDING until its retry at 153 ms: it held nothing before."""
    log = EventLog()
    log.open("w", timeout_ms=150)
    log.open("r1", timeout_ms=150)
    log.open("r2", timeout_ms=150)
    log.call("w", 0, 1, "BEGIN IMMEDIATE")
    log.call("w", 1, 2, "INSERT INTO t VALUES (1)")
    log.call("r1", 5, 5.5, "BEGIN")
    log.call("r1", 5.5, 6, "SELECT * FROM t")
    log.call("w", 10, 130, "COMMIT", op="commit", in_txn=False, busy=retries(10, 9))
    log.call("r2", 50, 154, "SELECT count(*) FROM t", in_txn=False, busy=retries(50, 8))
    log.call("r1", 129, 129.5, "COMMIT", op="commit", in_txn=False)
    return log


def test_a_read_hold_taken_after_waiting_starts_at_the_last_retry() -> None:
    timeline = reader_behind_pending().timeline()
    [r2] = [h for h in timeline.read_holds if h.holder.conn == "r2"]
    assert (r2.t0, r2.t1) == (ns(153), ns(154))  # the last retry at 128 ms slept 25 ms
    assert r2.in_statements_ns == ns(1) and r2.own_wait_ns == 0


def test_a_commit_does_not_wait_for_a_reader_that_was_itself_waiting() -> None:
    timeline = reader_behind_pending().timeline()
    [commit] = [w for w in timeline.waits if w.waiter.conn == "w"]
    assert [h.holder.conn for h in blockers(commit, timeline)] == ["r1"]
    chain = "\n".join(wait_for_chain(commit, timeline))
    assert "connection r2" not in chain and "CYCLE" not in chain
    [finding] = [f for f in diagnose(timeline) if f.pattern == "reader-blocks-writer"]
    assert finding.facts["readers"] == ["r1"]


def test_a_write_hold_taken_after_waiting_starts_at_the_last_retry() -> None:
    log = EventLog(journal_mode="wal")
    log.open("a")
    log.open("b")
    log.call("a", 0, 1, "BEGIN IMMEDIATE")
    log.call("a", 40, 41, "COMMIT", op="commit", in_txn=False)
    log.call("b", 2, 45, "BEGIN IMMEDIATE", busy=retries(2, 5))  # last: 20 ms + 15 ms sleep
    log.call("b", 50, 51, "COMMIT", op="commit", in_txn=False)
    [_, b] = log.timeline().write_holds
    assert (b.holder.conn, b.t0, b.t1) == ("b", ns(35), ns(51))
    assert b.in_statements_ns == ns(10 + 1)  # from the grant to the end of BEGIN, and COMMIT


def test_without_busy_events_a_hold_taken_after_waiting_starts_when_its_statement_ended() -> None:
    log = EventLog()
    log.open("r")
    log.call("r", 50, 105, "SELECT 1", in_txn=False)
    log.events[-1]["busy"] = 6  # the count, but no busy events (an older log)
    [hold] = log.timeline().read_holds
    assert hold.t0 == ns(105)


def test_the_holder_s_own_wait_names_the_statement_that_waited() -> None:
    # Rollback journal: a big INSERT spills the page cache and needs EXCLUSIVE, so it waits
    # for a reader's SHARED lock inside its own transaction. That is no COMMIT.
    log = EventLog()
    log.open("a")
    log.call("a", 0, 1, "BEGIN IMMEDIATE")
    log.call("a", 1, 80, "INSERT INTO t SELECT * FROM big", busy=retries(1, 7))
    log.call("a", 81, 82, "COMMIT", op="commit", in_txn=False)
    timeline = log.timeline()
    [hold] = timeline.write_holds
    story = hold_story(hold, timeline, timeline.origin_ns)
    assert "its `INSERT INTO t SELECT * FROM big` waiting for other connections" in story
    assert "COMMIT waiting" not in story
