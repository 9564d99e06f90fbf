from sqlite_lockprobe.diagnose import long_write_transaction, write_convoy

from .builders import TimelineBuilder


def convoy(journal_mode: str = "delete", holders: int = 50):
    """peewee 1071 / aiosqlite seed: many writers, 20 ms transactions, 1 s busy_timeout."""
    tl = TimelineBuilder(journal_mode=journal_mode)
    writers = [tl.conn(f"w{i:02d}", timeout_ms=1000) for i in range(holders)]
    for i, w in enumerate(writers):
        tl.write_hold(w, i * 25, i * 25 + 20)
    starved = tl.conn("starved", timeout_ms=1000)
    tl.wait(starved, 10, 1010, failed=True, handler_calls=30)
    lucky = tl.conn("lucky", timeout_ms=1000)
    tl.wait(lucky, 30, 60, handler_calls=3)
    return tl


def test_timeout_behind_many_short_holders_is_write_convoy():
    findings = write_convoy.detect(convoy().build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "write-convoy"
    assert f.severity == "error"
    assert f.confidence == "high"
    assert f.facts["timed_out_waits"] == 1
    assert f.facts["distinct_holders"] == 41  # holds 0..40 start before the wait ends
    assert f.facts["wait_ms"] == {"p50": 30.0, "p95": 1000.0, "p99": 1000.0, "max": 1000.0}
    assert f.facts["near_timeout"] == 1
    assert any("p50 30.0 ms, p95 1000.0 ms" in line for line in f.evidence)


def test_convoy_is_not_long_write_transaction():
    assert long_write_transaction.detect(convoy().build()) == []


def test_convoy_in_wal_does_not_advise_wal_again():
    f = write_convoy.detect(convoy("wal").build())[0]
    assert all("journal_mode = WAL" not in a.snippets.get("pragma", "") for a in f.advice)


def test_single_long_holder_is_not_convoy():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b", timeout_ms=1000)
    tl.write_hold(a, 0, 3000)
    tl.wait(b, 10, 1010, failed=True, handler_calls=30)
    assert write_convoy.detect(tl.build()) == []


def test_failed_wait_with_no_recorded_holder_is_not_convoy():
    tl = TimelineBuilder()
    b = tl.conn("b", timeout_ms=1000)
    tl.wait(b, 10, 1010, failed=True, handler_calls=30)
    assert write_convoy.detect(tl.build()) == []


def test_one_short_holder_only_gives_medium_confidence():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b", timeout_ms=1000)
    tl.write_hold(a, 0, 100)
    tl.wait(b, 10, 1010, failed=True, handler_calls=30)
    f = write_convoy.detect(tl.build())[0]
    assert f.confidence == "medium"
