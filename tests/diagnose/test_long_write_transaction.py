from sqlite_lockprobe.diagnose import long_write_transaction, write_convoy

from .builders import TimelineBuilder


def slow_holder(idle: bool = True):
    """Home Assistant 117263 / airflow 33187: one holder keeps the write lock for seconds."""
    tl = TimelineBuilder()
    a = tl.conn("a", pid=200)
    b = tl.conn("b")
    c = tl.conn("c")
    tl.write_hold(
        a,
        0,
        8000,
        taken_by="DELETE FROM events WHERE ts < ?",
        in_statements_ms=500 if idle else 7800,
        idle=(100, 7600, "DELETE FROM events WHERE ts < ?", "COMMIT") if idle else None,
        implicit_begin=True,
    )
    tl.wait(b, 1000, 6000, failed=True, handler_calls=40)
    tl.wait(c, 2000, 7000, failed=True, handler_calls=40)
    return tl


def test_long_idle_hold_that_outlasts_busy_timeout_is_long_write_transaction():
    findings = long_write_transaction.detect(slow_holder().build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "long-write-transaction"
    assert f.severity == "error"
    assert f.confidence == "high"
    assert f.facts["failed_waits"] == 2
    assert f.facts["longest_hold_ms"] == 8000.0
    hold = f.facts["holds"][0]
    assert hold["holder_conn"] == "a" and hold["holder_pid"] == 200
    assert hold["idle_ms"] == 7500.0 and hold["in_statements_ms"] == 500.0
    assert hold["taken_by"] == "DELETE FROM events WHERE ts < ?"
    text = "\n".join(f.evidence)
    assert "pid 200" in text
    assert "opened implicitly by Python's sqlite3" in text
    assert "longest idle gap 7500.0 ms between `DELETE FROM events WHERE ts < ?` and `COMMIT`" in (
        text
    )
    assert "mostly idle in the application" in text


def test_slow_statement_hold_says_inside_statements():
    f = long_write_transaction.detect(slow_holder(idle=False).build())[0]
    assert any("mostly inside SQLite statements" in line for line in f.evidence)


def test_long_holder_is_not_reported_as_convoy():
    timeline = slow_holder().build()
    assert long_write_transaction.detect(timeline)
    assert write_convoy.detect(timeline) == []


def test_wait_ending_exactly_at_timeout_counts():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b", timeout_ms=1000)
    tl.write_hold(a, 0, 3000)
    tl.wait(b, 500, 1500, failed=False, handler_calls=20)  # succeeded on the last retry
    f = long_write_transaction.detect(tl.build())[0]
    assert f.severity == "warning"
    assert f.facts["blocked_waits"] == 1


def test_short_hold_with_momentary_wait_is_healthy():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b")
    tl.write_hold(a, 0, 30)
    tl.wait(b, 10, 31, handler_calls=4)
    assert long_write_transaction.detect(tl.build()) == []


def test_only_same_thread_victim_leaves_no_long_write_finding_but_other_thread_victim_does():
    tl = TimelineBuilder()
    a = tl.conn("a", thread=7)
    b = tl.conn("b", thread=7)
    c = tl.conn("c", thread=8)
    tl.write_hold(a, 0, 8000)
    tl.wait(b, 100, 5100, failed=True, handler_calls=40)
    tl.wait(c, 200, 5200, failed=True, handler_calls=40)
    f = long_write_transaction.detect(tl.build())[0]
    assert f.facts["blocked_waits"] == 1
    assert f.facts["worst"]["waiter_conn"] == "c"


def test_holder_left_open_after_error_is_said():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b")
    tl.write_hold(a, 0, 9000, released_by="end-of-run")
    tl.wait(b, 100, 5100, failed=True, handler_calls=40)
    f = long_write_transaction.detect(tl.build())[0]
    assert any("still open when the run ended" in line for line in f.evidence)
