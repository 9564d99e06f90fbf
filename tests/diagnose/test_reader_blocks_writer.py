from sqlite_lockprobe.diagnose import reader_blocks_writer

from .builders import TimelineBuilder


def commit_behind_reader(journal_mode: str = "delete", commit_ms: float = 2000, failed=True):
    tl = TimelineBuilder(journal_mode=journal_mode)
    r = tl.conn("reader")
    w = tl.conn("writer", timeout_ms=2000)
    tl.read_hold(r, 0, 3000, taken_by="SELECT * FROM report")
    tl.write_hold(w, 100, 200 + commit_ms)
    tl.wait(w, 150, 150 + commit_ms, failed=failed, handler_calls=30, phase="commit")
    return tl


def test_commit_waiting_for_readers_in_rollback_mode_is_reader_blocks_writer():
    findings = reader_blocks_writer.detect(commit_behind_reader().build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "reader-blocks-writer"
    assert f.severity == "error" and f.confidence == "high"
    assert f.facts["readers"] == ["reader"]
    assert f.facts["journal_mode"] == "delete"
    assert any("reader: a SHARED lock held by worker-reader" in e for e in f.evidence)
    assert f.advice[0].automatic


def test_reader_blocks_writer_is_absent_in_wal():
    assert reader_blocks_writer.detect(commit_behind_reader("wal").build()) == []


def test_slow_commit_that_succeeded_is_a_warning():
    f = reader_blocks_writer.detect(commit_behind_reader(commit_ms=1500, failed=False).build())[0]
    assert f.severity == "warning"


def test_quick_commit_wait_is_healthy():
    tl = commit_behind_reader(commit_ms=20, failed=False)
    assert reader_blocks_writer.detect(tl.build()) == []


def test_upgrade_winner_commit_belongs_to_upgrade_deadlock():
    tl = TimelineBuilder()
    a = tl.conn("a")
    b = tl.conn("b")
    tl.read_hold(b, 0, 5500, released_by="ROLLBACK")
    tl.write_hold(a, 5, 5200)
    tl.wait(b, 10, 10.2, failed=True, handler_calls=0, had_read=True)
    tl.wait(a, 20, 5020, failed=True, handler_calls=40, phase="commit")
    assert reader_blocks_writer.detect(tl.build()) == []
