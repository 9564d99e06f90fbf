"""A near-miss is a finding: waits that succeeded after using half or more of busy_timeout are
named by their cause (write-convoy, long-write-transaction, reader-blocks-writer...), as a
warning, with the margin that was left, though nothing failed."""

from __future__ import annotations

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.findings import Finding

from .builders import TimelineBuilder


def convoy_near_miss(timeout_ms: int = 5000, waited_fraction: float = 0.91) -> TimelineBuilder:
    """The aiosqlite report: many coroutines, each with its own connection and a short
    transaction; no insert failed, but the longest waits came close to busy_timeout."""
    tl = TimelineBuilder()
    writers = [tl.conn(f"w{i:03d}", timeout_ms=timeout_ms) for i in range(400)]
    hold_ms = timeout_ms / 100
    for i, w in enumerate(writers):
        tl.write_hold(w, i * hold_ms, (i + 0.8) * hold_ms, taken_by="INSERT INTO person VALUES (1)")
    waited = waited_fraction * timeout_ms
    for i in range(5):
        waiter = tl.conn(f"waiter{i}", timeout_ms=timeout_ms)
        tl.wait(waiter, i * hold_ms, i * hold_ms + waited * (1 - i / 10), handler_calls=60)
    return tl


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, [f.pattern for f in findings]
    return findings[0]


def test_a_convoy_that_came_close_to_the_timeout_is_a_write_convoy_warning() -> None:
    f = only(diagnose(convoy_near_miss().build()))
    assert (f.pattern, f.severity) == ("write-convoy", "warning")
    assert "near-miss" in f.title
    assert any(
        "the longest wait used 91 % of busy_timeout: 9 % margin" in line for line in f.evidence
    )
    assert f.facts["near_miss"]["used_percent"] == 91
    assert f.facts["near_miss"]["margin_percent"] == 9
    assert f.facts["timed_out_waits"] == 0 and f.facts["long_waits"] >= 1


def test_a_wait_past_the_timeout_that_still_got_the_lock_leaves_no_margin() -> None:
    f = only(diagnose(convoy_near_miss(waited_fraction=1.036).build()))
    assert f.severity == "warning"
    assert any("used 103 % of busy_timeout: no margin left" in line for line in f.evidence)


def test_a_short_timeout_counts_too() -> None:
    # 90 ms of a 150 ms timeout: under the old 100 ms floor, a near-miss nobody was told of.
    f = only(diagnose(convoy_near_miss(timeout_ms=150, waited_fraction=0.6).build()))
    assert (f.pattern, f.severity) == ("write-convoy", "warning")


def test_waits_under_half_the_timeout_are_no_near_miss() -> None:
    assert diagnose(convoy_near_miss(waited_fraction=0.45).build()) == []


def test_a_long_holder_that_nearly_timed_a_writer_out_is_long_write_with_its_margin() -> None:
    tl = TimelineBuilder(journal_mode="wal")
    purge = tl.conn("purge")
    writer = tl.conn("writer", timeout_ms=5000)
    tl.write_hold(purge, 0, 4100, taken_by="DELETE FROM events WHERE ts < 1")
    tl.wait(writer, 10, 4110, handler_calls=50)  # 82 % of 5 s, then it got the lock
    f = only(diagnose(tl.build()))
    assert (f.pattern, f.severity) == ("long-write-transaction", "warning")
    assert any("used 82 % of busy_timeout: 18 % margin" in line for line in f.evidence)
    assert f.facts["near_miss"]["waiter_conn"] == "writer"


def test_a_commit_that_nearly_timed_out_behind_readers_is_reader_blocks_writer() -> None:
    tl = TimelineBuilder()
    reader = tl.conn("reader")
    writer = tl.conn("writer", timeout_ms=2000)
    tl.read_hold(reader, 0, 1500, taken_by="SELECT * FROM report")
    tl.write_hold(writer, 100, 1600)
    tl.wait(writer, 150, 1550, handler_calls=30, phase="commit")  # 70 % of 2 s
    f = only(diagnose(tl.build()))
    assert (f.pattern, f.severity) == ("reader-blocks-writer", "warning")
    assert any("used 70 % of busy_timeout: 30 % margin" in line for line in f.evidence)


def test_a_failure_leaves_no_margin_to_report() -> None:
    tl = convoy_near_miss()
    starved = tl.conn("starved", timeout_ms=5000)
    tl.wait(starved, 0, 5000, failed=True, handler_calls=60)
    f = only(diagnose(tl.build()))
    assert (f.pattern, f.severity) == ("write-convoy", "error")
    assert f.facts["timed_out_waits"] == 1 and "near_miss" not in f.facts
    assert not any("margin" in line for line in f.evidence)
