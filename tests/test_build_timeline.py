"""build_timeline on hand-written event lists: what each call does to its connection's holds,
who did it, and what the summary counts, including the cases its per-call shortcuts must
get right (calls unlike any before, actors that change, fields left out, spans that start in
the same nanosecond, long logs where most calls are not kept)."""

from __future__ import annotations

from typing import Any

from sqlite_lockprobe.diagnose.activity import ActivityCounter
from sqlite_lockprobe.diagnose.model import IdleGap
from sqlite_lockprobe.diagnose.stats import summarize
from sqlite_lockprobe.diagnose.timeline import build_timeline

US = 1_000


def opened(conn: str, group: str = "g", pid: int = 7, worker: str = "w#0") -> dict[str, Any]:
    return {"k": "open", "t": 0, "conn": conn, "worker": worker, "group": group, "pid": pid}


def call(
    conn: str, t0: int, t1: int, sql: str, stmts: list[str] | None = None, **fields: Any
) -> dict[str, Any]:
    event = {
        "k": "call",
        "t0": t0,
        "t1": t1,
        "conn": conn,
        "worker": "w#0",
        "thread": 1,
        "task": None,
        "op": "execute",
        "sql": sql,
        "stmts": [sql] if stmts is None else stmts,
        "busy": 0,
        "err": None,
        "ext": None,
        "msg": None,
        "in_txn": True,
        "site": None,
    }
    event.update(fields)
    return event


def transaction(conn: str, t: int) -> list[dict[str, Any]]:
    """BEGIN IMMEDIATE, INSERT, 30 us idle, UPDATE, COMMIT: 10 us each, 5 us apart."""
    return [
        call(conn, t, t + 10 * US, "BEGIN IMMEDIATE"),
        call(conn, t + 15 * US, t + 25 * US, "INSERT INTO t VALUES (1)"),
        call(conn, t + 55 * US, t + 65 * US, "UPDATE t SET x = 1"),
        call(conn, t + 70 * US, t + 80 * US, "COMMIT", in_txn=False),
    ]


def test_a_transaction_holds_the_write_lock_from_begin_and_reads_from_its_first_write() -> None:
    timeline = build_timeline([opened("a"), *transaction("a", 1000 * US)])
    [write], [read] = timeline.write_holds, timeline.read_holds
    assert (write.t0, write.t1, write.taken_by, write.released_by) == (
        1000 * US,
        1080 * US,
        "BEGIN IMMEDIATE",
        "COMMIT",
    )
    assert (read.t0, read.t1, read.taken_by) == (1015 * US, 1080 * US, "INSERT INTO t VALUES (1)")
    assert write.in_statements_ns == 40 * US and read.in_statements_ns == 30 * US
    # The longest time in the application, between the INSERT and the UPDATE, for both.
    gap = IdleGap(1025 * US, 1055 * US, "INSERT INTO t VALUES (1)", "UPDATE t SET x = 1")
    assert write.longest_idle == gap and read.longest_idle == gap
    assert write.holder.worker == "w#0" and write.holder.group == "g" and write.holder.pid == 7


def test_idle_until_the_connection_closes_is_the_longest_gap() -> None:
    events = [
        opened("a"),
        call("a", 0, 10 * US, "BEGIN IMMEDIATE"),
        call("a", 15 * US, 20 * US, "INSERT INTO t VALUES (1)"),
        {"k": "close", "t": 500 * US, "conn": "a"},
    ]
    [write] = build_timeline(events).write_holds
    assert write.released_by == "close" and write.t1 == 500 * US
    assert write.longest_idle == IdleGap(20 * US, 500 * US, "INSERT INTO t VALUES (1)", "close")


def test_statements_of_one_call_open_holds_in_order() -> None:
    # Python's implicit BEGIN before a write: deferred, so the write statement takes the lock.
    implicit = build_timeline(
        [opened("a"), call("a", 0, 10, "INSERT INTO t VALUES (1)", ["BEGIN ", "INSERT INTO t"])]
    )
    [write] = implicit.write_holds
    assert write.implicit_begin and write.taken_by == "INSERT INTO t VALUES (1)"
    assert implicit.read_holds == ()  # the statement that takes the write lock opens no read
    # A read, then a write in the same call: both holds.
    both = build_timeline([opened("a"), call("a", 0, 10, "x", ["SELECT 1", "UPDATE t SET x=1"])])
    assert len(both.write_holds) == 1 and len(both.read_holds) == 1
    # Two writes: the first takes the write lock, the second opens the read hold.
    twice = build_timeline([opened("a"), call("a", 0, 10, "x", ["DELETE FROM t", "DELETE FROM u"])])
    assert len(twice.write_holds) == 1 and len(twice.read_holds) == 1


def test_autocommit_false_reopens_after_commit() -> None:
    events = [
        opened("a"),
        call("a", 0, 10, "INSERT INTO t VALUES (1)", ["INSERT INTO t VALUES (1)"]),
        call("a", 20, 30, "", ["COMMIT", "BEGIN"], op="commit"),
        call("a", 40, 50, "INSERT INTO t VALUES (2)"),
    ]
    first, second = build_timeline(events).write_holds
    assert first.released_by == "COMMIT" and not first.autocommit_false
    assert second.autocommit_false and second.implicit_begin and second.released_by == "end-of-run"


def test_a_failed_commit_leaves_the_transaction_open() -> None:
    events = [
        opened("a"),
        call("a", 0, 10, "BEGIN IMMEDIATE"),
        call("a", 20, 30, "COMMIT", op="commit", err=5, ext=5, msg="database is locked"),
        call("a", 40, 50, "ROLLBACK", op="rollback", in_txn=False),
    ]
    timeline = build_timeline(events)
    [write] = timeline.write_holds
    assert (write.failed_commit_t, write.failed_commit_code) == (30, 5)
    assert write.released_by == "ROLLBACK" and write.t1 == 50
    [wait] = timeline.waits
    assert wait.failed and wait.phase == "commit" and wait.call.error == 5


def test_the_actor_follows_worker_events_and_reopened_connections() -> None:
    events = [
        {**opened("a", group=""), "worker": None},
        call("a", 0, 10, "SELECT 1", in_txn=False),
        {"k": "worker", "t": 15, "worker": "w#0", "group": "late", "kind": "thread", "pid": 7},
        call("a", 20, 30, "SELECT 1", in_txn=False),
        call("a", 40, 50, "SELECT 1", in_txn=False, thread=2, site="app.py:3"),
        opened("a", group="again", pid=9),
        call("a", 60, 70, "SELECT 1", in_txn=False),
    ]
    actors = [c.actor for c in build_timeline(events).calls]
    assert [(a.group, a.pid, a.thread, a.call_site) for a in actors] == [
        ("", 7, 1, None),
        ("late", 7, 1, None),
        ("late", 7, 2, "app.py:3"),
        ("again", 9, 1, None),
    ]


def test_holds_that_start_in_the_same_nanosecond_are_ordered_by_end_then_connection() -> None:
    events = [opened("b"), opened("a"), opened("c")]
    events += [call(c, 100, t1, "SELECT 1", in_txn=False) for c, t1 in (("b", 300), ("c", 200))]
    events += [call("a", 100, 300, "SELECT 1", in_txn=False)]
    events += [call("a", 50, 400, "SELECT 2", in_txn=False)]
    holds = build_timeline(events).read_holds
    assert [(h.t0, h.t1, h.holder.conn) for h in holds] == [
        (50, 400, "a"),
        (100, 200, "c"),
        (100, 300, "a"),
        (100, 300, "b"),
    ]


def test_fields_left_out_or_recorded_as_text_read_as_before() -> None:
    sparse = {"k": "call", "t0": "100", "t1": 200.0, "conn": "a", "sql": "BEGIN IMMEDIATE"}
    events = [opened("a"), {**sparse, "in_txn": True}, call("a", 300, 400, "COMMIT", busy=None)]
    events[-1]["in_txn"] = False
    timeline = build_timeline(events)
    [write] = timeline.write_holds
    assert (write.t0, write.t1, write.released_by) == (100, 400, "COMMIT")
    # Without in_txn, the call left no transaction open.
    [alone] = build_timeline([opened("a"), sparse]).write_holds
    assert (alone.t0, alone.t1, alone.released_by) == (100, 200, "autocommit")
    first = timeline.calls[0]
    assert (first.op, first.statements, first.in_txn_after, first.busy_calls) == (
        "execute",
        (),
        True,
        0,
    )
    assert type(first.t0) is int and type(first.t1) is int


def test_past_the_kept_calls_holds_and_waits_are_still_complete() -> None:
    events = [opened("a")]
    for n in range(50):
        events += transaction("a", n * 1000 * US)
    events[-4]["busy"] = 3  # the last BEGIN waited
    timeline = build_timeline(events, keep_all_calls_up_to=10)
    assert not timeline.calls_complete
    assert [c.sql for c in timeline.calls] == ["BEGIN IMMEDIATE"]
    assert len(timeline.write_holds) == len(timeline.read_holds) == 50
    [wait] = timeline.waits
    assert wait.handler_calls == 3 and wait.call is timeline.calls[0] and wait.had_read is False


def test_the_summary_counts_every_call_once_in_the_same_pass() -> None:
    activity = ActivityCounter()
    events = [
        {"k": "meta", "t": 0, "pid": 1, "source": "run x"},
        {"k": "worker", "t": 0, "worker": "w#0", "group": "g", "kind": "thread", "pid": 7},
        opened("a"),
        *transaction("a", 10 * US),
        call("a", 100 * US, 110 * US, "BEGIN IMMEDIATE", busy=2, err=5, ext=517, in_txn=False),
        call("a", 200 * US, 210 * US, "", ["ROLLBACK"], op="rollback", in_txn=False),
        call("a", 220 * US, 230 * US, "x", ["ROLLBACK TO sp"], in_txn=False),
        # On a connection opened before recording began: counted, never drawn.
        call("zz", 5, 900 * US, "ROLLBACK", op="execute", in_txn=False),
        {"k": "busy", "t": 105 * US, "conn": "a", "n": 0, "delay_ms": 1},
    ]
    timeline = build_timeline(iter(events), activity=activity)
    assert activity.events == len(events)
    assert (activity.first_ns, activity.last_ns) == (5, 900 * US)
    assert activity.meta["source"] == "run x" and activity.kinds == {"g": "thread"}
    counted = {
        g: (c.calls, dict(c.errors), c.busy_errors, c.handler_calls, c.rollbacks)
        for g, c in activity.groups.items()
    }
    assert counted == {
        "g": (7, {"SQLITE_BUSY_SNAPSHOT (517)": 1}, 1, 2, 1),
        "(no worker)": (1, {}, 0, 0, 1),
    }
    summary = summarize(timeline, activity)
    assert summary.total.calls == 8 and summary.total.commits == 1
    assert [(g.group, g.calls) for g in summary.groups] == [("(no worker)", 1), ("g", 7)]


def test_calls_with_expanded_parameters_give_the_same_holds_past_the_plan_cache(
    monkeypatch: Any,
) -> None:
    """Traced statements with their parameters expanded make each call's text its own: the
    builder's caches start again past MAX_PLANS (3 here), and every transaction is still one
    hold taken by its INSERT and released by its COMMIT."""
    from sqlite_lockprobe.diagnose import timeline as timeline_module

    monkeypatch.setattr(timeline_module, "MAX_PLANS", 3)
    events: list[dict[str, Any]] = [opened("a")]
    for i in range(10):
        t = i * 1000 * US
        insert = "INSERT INTO t VALUES (?)"
        events.append(
            call("a", t, t + 10 * US, insert, ["BEGIN DEFERRED", f"INSERT INTO t VALUES ({i})"])
        )
        events.append(call("a", t + 20 * US, t + 30 * US, "COMMIT", op="commit", in_txn=False))
    holds = build_timeline(events).write_holds
    assert [(h.t0, h.t1) for h in holds] == [
        (i * 1000 * US, i * 1000 * US + 30 * US) for i in range(10)
    ]
    assert {(h.taken_by, h.released_by, h.implicit_begin) for h in holds} == {
        ("INSERT INTO t VALUES (?)", "COMMIT", True)
    }


def test_a_connection_id_opened_again_keeps_what_its_first_opening_did() -> None:
    """A later process can get the same pid, and so the same connection id: the first
    opening's hold, left open, ends where the id is opened again; the second is its own."""
    events = [
        opened("a", pid=7),
        call("a", 0, 10 * US, "BEGIN IMMEDIATE"),
        {**opened("a", pid=7), "t": 50 * US},
        *transaction("a", 100 * US),
    ]
    holds = build_timeline(events).write_holds
    assert [(h.t0, h.t1, h.released_by) for h in holds] == [
        (0, 50 * US, "close"),
        (100 * US, 180 * US, "COMMIT"),
    ]
