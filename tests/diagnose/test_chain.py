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
        # Every hold and wait overlaps all the others (one instant holds the whole chain), and
        # each wait's longest blocker is the next connection's hold.
        tl.write_hold(actors[k + 1], k * 10, 1505 + k * 10)
        tl.wait(actor, k * 10 + 5, 1500 + k * 10)
    timeline = tl.build()
    lines = wait_for_chain(timeline.waits[0], timeline)
    assert f"({MAX_DEPTH}) WAITS FOR: the WAL write lock held by worker-c{MAX_DEPTH}" in "\n".join(
        lines
    )
    assert lines[-1] == "    ... (chain continues)"


def test_a_wait_that_began_after_the_waiter_got_its_lock_is_no_edge():
    """a's wait (0-60) met b's hold; b waited on c only later (110-160): never at once."""
    tl = TimelineBuilder(journal_mode="wal")
    a, b, c = tl.conn("a"), tl.conn("b"), tl.conn("c")
    tl.write_hold(b, 0, 120)
    tl.write_hold(c, 100, 200)
    wait = tl.wait(a, 10, 60)
    tl.wait(b, 110, 160)
    text = "\n".join(wait_for_chain(wait, tl.build()))
    assert "(1) WAITS FOR: the WAL write lock held by worker-b" in text
    assert "(2) WAITER" not in text
    assert "worker-b was not waiting on any lock" in text


def test_waits_that_all_failed_around_a_cycle_are_a_deadlock():
    """python-cs50 130: b's write refused, b keeps SHARED; a's COMMIT waits on it and fails."""
    tl = TimelineBuilder()
    a, b = tl.conn("a"), tl.conn("b")
    tl.read_hold(b, 0, 5500, released_by="ROLLBACK")
    tl.write_hold(a, 5, 5200, released_by="ROLLBACK")
    refused = tl.wait(b, 10, 10.2, failed=True, handler_calls=0, had_read=True)
    tl.wait(a, 20, 5020, failed=True, handler_calls=40, phase="commit")
    lines = wait_for_chain(refused, tl.build())
    assert lines[-1] == (
        "*** CYCLE: worker-b -> worker-a -> worker-b: a deadlock; no busy_timeout can resolve it"
    )


def test_a_cycle_in_which_a_wait_succeeded_is_no_deadlock():
    """The upgrade deadlock as SQLite resolves it: b's write is refused, b rolls back at once,
    and a's COMMIT, which waited for b's SHARED lock, then gets its lock."""
    tl = TimelineBuilder()
    a, b = tl.conn("a"), tl.conn("b")
    tl.read_hold(b, 0, 12, released_by="ROLLBACK")
    tl.write_hold(a, 5, 40)
    refused = tl.wait(b, 10, 10.2, failed=True, handler_calls=0, had_read=True)
    tl.wait(a, 8, 35, handler_calls=3, phase="commit")  # succeeded
    lines = wait_for_chain(refused, tl.build())
    assert not any("CYCLE" in line for line in lines)
    assert lines[-1].startswith("*** BACK TO worker-b (worker-b -> worker-a -> worker-b): not a")
    assert "SQLite broke it by failing worker-b's" in lines[-1]
