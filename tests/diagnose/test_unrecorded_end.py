"""A hold whose end was not recorded is never a finding on its own.

A multiprocessing Pool ended with terminate() kills its workers before their last events are
written: a worker's COMMIT may have run, its event lost. Its hold must not stretch to the end
of the recording and be blamed for waits that came after its process's record stops."""

from __future__ import annotations

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.evidence import hold_story
from sqlite_lockprobe.diagnose.model import END_NOT_RECORDED

from .eventlog import EventLog, ns


def pool_terminated() -> EventLog:
    """Parent pid 1 records until 300 ms. Worker pid 2 took the write lock at 10 ms and its
    record stops at 12 ms (its COMMIT's event was lost). Worker pid 3 then waited 130 ms of its
    200 ms busy_timeout for a lock no recorded connection held."""
    log = EventLog()
    log.open("parent", pid=1)
    log.call("parent", 1, 2, "SELECT count(*) FROM t", in_txn=False)
    log.open("w", pid=2, t_ms=5)
    log.call("w", 10, 11, "BEGIN IMMEDIATE")
    log.call("w", 11, 12, "INSERT INTO t VALUES (1)")
    log.open("v", pid=3, timeout_ms=200, t_ms=6)
    retries = [(50 + 10 * i, 10) for i in range(13)]
    log.call("v", 50, 180, "INSERT INTO t VALUES (2)", in_txn=False, busy=retries)
    log.close("v", 190)
    log.call("parent", 299, 300, "SELECT count(*) FROM t", in_txn=False)
    log.close("parent", 300)
    return log


def test_a_hold_ends_where_its_process_record_stops() -> None:
    timeline = pool_terminated().timeline()
    [hold] = [h for h in timeline.write_holds if h.holder.conn == "w"]
    assert hold.released_by == END_NOT_RECORDED
    assert hold.t1 == ns(12)  # not the end of the recording (300 ms)
    story = hold_story(hold, timeline, timeline.origin_ns)
    assert "its end was not recorded" in story
    assert "never committed" not in story


def test_a_hold_whose_end_was_not_recorded_blames_nobody() -> None:
    findings = diagnose(pool_terminated().timeline())
    assert "long-write-transaction" not in {f.pattern for f in findings}
    text = "\n".join(line for f in findings for line in f.evidence)
    assert "never committed" not in text


def test_alone_it_gives_no_finding() -> None:
    log = EventLog()
    log.open("parent", pid=1)
    log.open("w", pid=2)
    log.call("w", 10, 11, "BEGIN IMMEDIATE")
    log.call("parent", 299, 300, "SELECT 1", in_txn=False)
    timeline = log.timeline()
    assert [h.released_by for h in timeline.write_holds] == [END_NOT_RECORDED]
    assert diagnose(timeline) == []


def test_a_hold_open_when_its_own_process_ends_the_recording_keeps_its_length() -> None:
    log = EventLog()
    log.open("a", pid=1)
    log.call("a", 10, 11, "BEGIN IMMEDIATE")
    log.call("a", 100, 101, "SELECT 1")
    [hold] = log.timeline().write_holds
    assert (hold.t1, hold.released_by) == (ns(101), "end-of-run")
