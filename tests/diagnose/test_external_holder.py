from sqlite_lockprobe.diagnose import external_holder, no_busy_timeout
from sqlite_lockprobe.diagnose.detectors import diagnose

from .builders import TimelineBuilder


def test_outside_pid_holding_reserved_while_nobody_recorded_holds_is_named():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000)
    wait = tl.wait(w, 0, 1000, failed=True, handler_calls=20)
    tl.os_sample(wait, 8, (100, "SHARED"), (4242, "RESERVED"))
    tl.os_sample(wait, 1008, (4242, "RESERVED"))
    [f] = external_holder.detect(tl.build())
    assert f.pattern == "external-holder"
    assert f.severity == "error" and f.confidence == "high"
    holder = f.facts["holder"]
    assert holder["pid"] == 4242 and holder["locks"] == ["RESERVED"]
    assert holder["name"] == "sqlite3" and holder["cmdline"] == ["sqlite3", "app.db"]
    assert holder["first_seen_ms"] == 8.0 and holder["last_seen_ms"] == 1008.0
    assert holder["samples"] == 2
    assert f.evidence[0].startswith(
        "pid 4242 (sqlite3, user alice): `sqlite3 app.db` held RESERVED"
    )


def test_a_recorded_process_pid_is_one_of_ours_never_an_outsider():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000, pid=100)
    tl.conn("other-process", pid=200)
    wait = tl.wait(w, 0, 1000, failed=True)
    tl.os_sample(wait, 8, (200, "RESERVED"))
    assert external_holder.detect(tl.build()) == []


def test_no_blame_while_a_recorded_connection_held_the_write_lock():
    tl = TimelineBuilder()
    a, w = tl.conn("a"), tl.conn("w", timeout_ms=1000)
    tl.write_hold(a, 0, 2000)
    wait = tl.wait(w, 10, 1010, failed=True)
    tl.os_sample(wait, 18, (4242, "RESERVED"))  # a stale or odd sample: ours explains it
    assert external_holder.detect(tl.build()) == []


def test_outside_shared_lock_blocks_a_rollback_commit_with_medium_confidence():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000)
    wait = tl.wait(w, 0, 1000, failed=True, phase="commit")
    tl.os_sample(wait, 8, (4242, "SHARED"))
    [f] = external_holder.detect(tl.build())
    assert f.confidence == "medium" and f.facts["holder"]["locks"] == ["SHARED"]
    assert any("it held only SHARED" in line for line in f.evidence)


def test_outside_shared_lock_does_not_block_a_reader_or_a_wal_writer():
    for journal, phase in (("delete", "read"), ("wal", "write")):
        tl = TimelineBuilder(journal_mode=journal)
        w = tl.conn("w", timeout_ms=1000)
        wait = tl.wait(w, 0, 1000, failed=True, phase=phase)
        tl.os_sample(wait, 8, (4242, "SHARED"))
        assert external_holder.detect(tl.build()) == []


def test_wal_write_lock_of_an_outside_process_is_named():
    tl = TimelineBuilder(journal_mode="wal")
    w = tl.conn("w", timeout_ms=1000)
    wait = tl.wait(w, 0, 400, handler_calls=12)  # a long wait that succeeded
    tl.os_sample(wait, 8, (4242, "WAL_WRITE_LOCK"), (4242, "WAL_READ_LOCK(0)"))
    [f] = external_holder.detect(tl.build())
    assert f.severity == "warning" and f.facts["holder"]["locks"] == ["WAL_WRITE_LOCK"]
    assert "-shm" in f.evidence[0]


def test_external_holder_takes_precedence_over_no_busy_timeout():
    """busy_timeout 0 and an outsider: the report names the outsider once, not both."""
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=0)
    wait = tl.wait(w, 0, 0.1, failed=True, handler_calls=0, phase="begin")
    tl.os_sample(wait, 0.2, (4242, "RESERVED"))  # the probe looks right after the failure
    timeline = tl.build()
    assert no_busy_timeout.detect(timeline) == []
    assert [f.pattern for f in diagnose(timeline)] == ["external-holder"]


def test_one_finding_per_outside_process():
    tl = TimelineBuilder()
    w = tl.conn("w", timeout_ms=1000)
    first = tl.wait(w, 0, 1000, failed=True)
    second = tl.wait(w, 2000, 3000, failed=True)
    tl.os_sample(first, 8, (4242, "RESERVED"))
    tl.os_sample(second, 2008, (5151, "EXCLUSIVE"))
    findings = external_holder.detect(tl.build())
    assert [f.facts["holder"]["pid"] for f in findings] == [4242, 5151]
