from sqlite_lockprobe.diagnose.chain import MAX_DEPTH, wait_for_chain

from .builders import TimelineBuilder


def test_waiter_with_no_recorded_holder_says_so():
    tl = TimelineBuilder()
    b = tl.conn("b")
    wait = tl.wait(b, 0, 5000, failed=True)
    lines = wait_for_chain(wait, tl.build())
    assert lines[0] == "*** (1) WAITER: worker-b (pid 100 thread 1000, connection b)"
    assert "a lock no recorded connection held" in lines[-1]


def test_holder_that_waits_on_nothing_ends_the_chain():
    tl = TimelineBuilder()
    a, b = tl.conn("a"), tl.conn("b")
    tl.write_hold(a, 0, 9000, taken_by="DELETE FROM t")
    wait = tl.wait(b, 10, 5010, failed=True)
    lines = wait_for_chain(wait, tl.build())
    assert "WAITS FOR: the RESERVED lock held by worker-a" in lines[2]
    assert "worker-a was not waiting on any lock" in lines[-1]


def test_chain_follows_the_holder_own_wait():
    """a waits for b's RESERVED lock; b's COMMIT itself waits for reader r's SHARED lock."""
    tl = TimelineBuilder()
    a, b, r = tl.conn("a"), tl.conn("b"), tl.conn("r")
    tl.read_hold(r, 0, 9000, taken_by="SELECT * FROM report")
    tl.write_hold(b, 50, 6000)
    tl.wait(b, 100, 5100, failed=True, phase="commit")
    wait = tl.wait(a, 200, 5200, failed=True)
    text = "\n".join(wait_for_chain(wait, tl.build()))
    assert "(1) WAITS FOR: the RESERVED lock held by worker-b" in text
    assert "(2) WAITER: worker-b" in text
    assert "(2) WAITS FOR: a SHARED lock held by worker-r" in text
    assert "worker-r was not waiting on any lock" in text


def test_chain_is_cut_at_max_depth():
    tl = TimelineBuilder(journal_mode="wal")
    actors = [tl.conn(f"c{i}") for i in range(MAX_DEPTH + 3)]
    for k, actor in enumerate(actors[:-1]):
        tl.write_hold(actors[k + 1], k * 100, (k + 1) * 100 + 20)
        tl.wait(actor, k * 100 + 10, k * 100 + 60)
    timeline = tl.build()
    lines = wait_for_chain(timeline.waits[0], timeline)
    assert f"({MAX_DEPTH}) WAITS FOR: the WAL write lock held by worker-c{MAX_DEPTH}" in "\n".join(
        lines
    )
    assert lines[-1] == "    ... (chain continues)"
