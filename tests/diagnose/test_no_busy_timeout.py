from sqlite_lockprobe.diagnose import no_busy_timeout, upgrade_deadlock

from .builders import TimelineBuilder


def test_busy_with_zero_timeout_is_no_busy_timeout():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b", timeout_ms=0)
    tl.write_hold(a, 0, 20)
    tl.wait(b, 5, 5.1, failed=True, handler_calls=0, phase="begin")
    findings = no_busy_timeout.detect(tl.build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "no-busy-timeout"
    assert f.severity == "error" and f.confidence == "high"
    assert f.facts["connections"] == [{"conn": "b", "timeout_ms": 0}]
    assert f.facts["read_then_write"] == 0
    assert [a.text for a in f.advice] == [no_busy_timeout.advice.busy_timeout().text]
    assert any("holder at that moment: the RESERVED lock held by worker-a" in e for e in f.evidence)


def test_tiny_timeout_counts_as_no_timeout():
    tl = TimelineBuilder()
    b = tl.conn("b", timeout_ms=10)
    tl.wait(b, 5, 15, failed=True, handler_calls=3)
    assert no_busy_timeout.detect(tl.build())[0].facts["failures"] == 1


def test_timeout_zero_read_then_write_is_no_busy_timeout_and_also_advises_immediate():
    tl = TimelineBuilder()
    b = tl.conn("b", timeout_ms=0)
    tl.wait(b, 5, 5.1, failed=True, handler_calls=0, had_read=True)
    timeline = tl.build()
    assert upgrade_deadlock.detect(timeline) == []
    f = no_busy_timeout.detect(timeline)[0]
    assert f.facts["read_then_write"] == 1
    assert len(f.advice) == 2 and f.advice[1].automatic


def test_upgrade_refusal_with_real_timeout_is_not_no_busy_timeout():
    tl = TimelineBuilder()
    b = tl.conn("b", timeout_ms=5000)
    tl.wait(b, 5, 5.1, failed=True, handler_calls=0, had_read=True)
    assert no_busy_timeout.detect(tl.build()) == []


def test_sane_timeout_failure_is_not_no_busy_timeout():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b", timeout_ms=50)
    tl.write_hold(a, 0, 200)
    tl.wait(b, 5, 55, failed=True, handler_calls=8)
    assert no_busy_timeout.detect(tl.build()) == []
