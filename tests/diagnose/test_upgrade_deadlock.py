from sqlite_lockprobe.diagnose import upgrade_deadlock
from sqlite_lockprobe.diagnose.model import SQLITE_BUSY_SNAPSHOT

from .builders import TimelineBuilder


def rollback_upgrade(loser_rolls_back_at: float = 5500, winner_timeout: int = 5000):
    """python-cs50 130: B reads, A takes RESERVED, B's write is refused, A's COMMIT waits on B."""
    tl = TimelineBuilder()
    a = tl.conn("a", timeout_ms=winner_timeout)
    b = tl.conn("b")
    tl.read_hold(b, 0, loser_rolls_back_at, released_by="ROLLBACK")
    tl.write_hold(a, 5, 5200, taken_by="INSERT INTO t VALUES (1)", released_by="ROLLBACK")
    tl.wait(b, 10, 10.2, failed=True, handler_calls=0, had_read=True, phase="write")
    tl.wait(a, 20, 5020, failed=True, handler_calls=40, phase="commit")
    return tl


def test_deferred_read_then_write_is_upgrade_deadlock():
    findings = upgrade_deadlock.detect(rollback_upgrade().build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "upgrade-deadlock"
    assert f.severity == "error"
    assert f.confidence == "high"
    assert f.facts["refused_writes"] == 1
    assert f.facts["codes"] == {"SQLITE_BUSY (5)": 1}
    assert "busy_timeout" in f.explanation and "does not help" in f.explanation


def test_rollback_mode_shows_winner_commit_waiting_on_loser_shared_lock():
    f = upgrade_deadlock.detect(rollback_upgrade().build())[0]
    assert f.facts["winner_commit_waits"] == 1
    assert f.facts["winner_commit_failures"] == 1
    assert f.facts["winners"] == ["a"]
    assert any(line.startswith("winner's COMMIT then") for line in f.evidence)
    chain = f.facts["chain"]
    assert any("WAITS FOR: a SHARED lock held by worker-b" in line for line in chain)
    assert any("CYCLE: worker-b -> worker-a -> worker-b" in line for line in chain)
    assert "kept its SHARED lock" in f.explanation


def test_wal_busy_snapshot_names_the_committer():
    tl = TimelineBuilder(journal_mode="wal")
    a = tl.conn("a")
    b = tl.conn("b")
    tl.read_hold(b, 0, 30, released_by="ROLLBACK")
    tl.write_hold(a, 5, 10, taken_by="UPDATE t SET n = 2")
    tl.wait(b, 20, 20.1, failed=True, handler_calls=0, had_read=True, code=SQLITE_BUSY_SNAPSHOT)
    f = upgrade_deadlock.detect(tl.build())[0]
    assert f.facts["codes"] == {"SQLITE_BUSY_SNAPSHOT (517)": 1}
    assert f.facts["busy_snapshot"] == 1
    assert f.facts["winner_commit_waits"] == 0
    assert any("stale snapshot: worker-a" in line for line in f.evidence)
    assert "SQLITE_BUSY_SNAPSHOT" in f.explanation


def test_busy_snapshot_counts_even_with_zero_timeout():
    tl = TimelineBuilder(journal_mode="wal")
    b = tl.conn("b", timeout_ms=0)
    tl.wait(b, 20, 20.1, failed=True, handler_calls=0, had_read=True, code=SQLITE_BUSY_SNAPSHOT)
    f = upgrade_deadlock.detect(tl.build())[0]
    assert any("was not recorded" in line for line in f.evidence)


def test_zero_timeout_plain_busy_is_not_upgrade_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b", timeout_ms=0)
    tl.write_hold(a, 0, 50)
    tl.wait(b, 10, 10.1, failed=True, handler_calls=0, had_read=True)
    assert upgrade_deadlock.detect(tl.build()) == []


def test_failure_after_busy_handler_calls_is_not_upgrade_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b")
    tl.write_hold(a, 0, 6000)
    tl.wait(b, 10, 5010, failed=True, handler_calls=40, had_read=True)
    assert upgrade_deadlock.detect(tl.build()) == []


def test_refusal_without_prior_read_is_not_upgrade_deadlock():
    tl = TimelineBuilder()
    b = tl.conn("b")
    tl.wait(b, 10, 10.1, failed=True, handler_calls=0, had_read=False, phase="begin")
    assert upgrade_deadlock.detect(tl.build()) == []


def test_reduced_detail_judges_by_speed_and_lowers_confidence():
    tl = TimelineBuilder(reduced_detail=True)
    a = tl.conn("a")
    b = tl.conn("b")
    tl.read_hold(b, 0, 100, released_by="ROLLBACK")
    tl.write_hold(a, 5, 60)
    tl.wait(b, 10, 11, failed=True, handler_calls=0, had_read=True)
    f = upgrade_deadlock.detect(tl.build())[0]
    assert f.confidence == "medium"
    assert f.facts["judged_without_handler_counts"] == 1
    assert any("reduced detail" in line for line in f.evidence)


def test_reduced_detail_slow_failure_is_not_called_upgrade():
    tl = TimelineBuilder(reduced_detail=True)
    b = tl.conn("b")
    tl.wait(b, 10, 4000, failed=True, handler_calls=0, had_read=True)
    assert upgrade_deadlock.detect(tl.build()) == []


def test_winner_in_another_process_is_named():
    tl = TimelineBuilder()
    a = tl.conn("a", pid=200)
    b = tl.conn("b", pid=100)
    tl.read_hold(b, 0, 100, released_by="ROLLBACK")
    tl.write_hold(a, 5, 60, taken_by="DELETE FROM t")
    tl.wait(b, 10, 10.1, failed=True, handler_calls=0, had_read=True)
    f = upgrade_deadlock.detect(tl.build())[0]
    assert any("winner: the RESERVED lock held by worker-a (pid 200" in line for line in f.evidence)
