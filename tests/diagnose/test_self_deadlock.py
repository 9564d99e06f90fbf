from sqlite_lockprobe.diagnose import long_write_transaction, self_deadlock

from .builders import TimelineBuilder


def event_loop_pair(waiter_failed: bool = True, wait_ms: float = 5000):
    """Two tasks of one event loop (seed 000): task A holds the lock, task B blocks the loop."""
    tl = TimelineBuilder()
    a = tl.conn("a", thread=7, task="session_a")
    b = tl.conn("b", thread=7, task="session_b")
    tl.write_hold(a, 0, 6000, taken_by="INSERT INTO items VALUES (?)", in_statements_ms=2)
    tl.wait(b, 100, 100 + wait_ms, failed=waiter_failed, handler_calls=40)
    return tl


def test_waiter_blocked_by_same_thread_holder_is_self_deadlock():
    findings = self_deadlock.detect(event_loop_pair().build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "self-deadlock"
    assert f.severity == "error"
    assert f.confidence == "high"
    assert f.facts["pairs"] == [["b", "a"]]
    assert f.facts["threads"] == [{"pid": 100, "thread": 7}]
    assert any("task session_b (waiter) and task session_a (holder)" in e for e in f.evidence)
    assert any("driven by the waiter's own OS thread" in line for line in f.facts["chain"])


def test_self_deadlock_takes_precedence_over_long_write_transaction():
    timeline = event_loop_pair().build()
    assert self_deadlock.detect(timeline)
    assert long_write_transaction.detect(timeline) == []


def test_long_wait_that_used_most_of_timeout_counts_without_failure():
    f = self_deadlock.detect(event_loop_pair(waiter_failed=False, wait_ms=4500).build())[0]
    assert f.severity == "warning"


def test_short_successful_wait_on_same_thread_is_not_reported():
    assert self_deadlock.detect(event_loop_pair(waiter_failed=False, wait_ms=5).build()) == []


def test_holder_on_another_thread_is_not_self_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a", thread=1)
    b = tl.conn("b", thread=2)
    tl.write_hold(a, 0, 6000)
    tl.wait(b, 100, 5100, failed=True, handler_calls=40)
    assert self_deadlock.detect(tl.build()) == []


def test_same_thread_number_in_another_process_is_not_self_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a", pid=1, thread=7)
    b = tl.conn("b", pid=2, thread=7)
    tl.write_hold(a, 0, 6000)
    tl.wait(b, 100, 5100, failed=True, handler_calls=40)
    assert self_deadlock.detect(tl.build()) == []


def test_hold_released_during_the_wait_is_not_self_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a", thread=7)
    b = tl.conn("b", thread=7)
    tl.write_hold(a, 0, 3000)
    tl.wait(b, 100, 5100, failed=True, handler_calls=40)
    assert self_deadlock.detect(tl.build()) == []


def test_rollback_commit_waiting_on_same_thread_reader_is_self_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a", thread=7)
    b = tl.conn("b", thread=7)
    tl.read_hold(a, 0, 9000)
    tl.write_hold(b, 50, 5200)
    tl.wait(b, 100, 5100, failed=True, handler_calls=40, phase="commit")
    f = self_deadlock.detect(tl.build())[0]
    assert f.facts["pairs"] == [["b", "a"]]
    assert f.facts["worst_holder"]["kind"] == "read"
