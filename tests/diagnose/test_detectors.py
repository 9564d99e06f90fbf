import json
import random

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import SQLITE_BUSY_SNAPSHOT
from sqlite_lockprobe.diagnose.registry import PRECEDENCE

from .builders import TimelineBuilder


def healthy(journal_mode: str = "wal"):
    """WAL, BEGIN IMMEDIATE, short transactions, 5 s timeout: momentary waits that succeed."""
    tl = TimelineBuilder(journal_mode=journal_mode)
    writers = [tl.conn(f"w{i}") for i in range(4)]
    reader = tl.conn("r")
    for i in range(200):
        w = writers[i % 4]
        tl.write_hold(w, i * 10, i * 10 + 4, taken_by="BEGIN IMMEDIATE")
        if i % 3 == 0:
            tl.wait(writers[(i + 1) % 4], i * 10 + 1, i * 10 + 5, handler_calls=2, phase="begin")
        tl.read_hold(reader, i * 10 + 5, i * 10 + 8)
    for i in range(5):
        tl.wal_sample(i * 500, 32 + 800 * 4120, mx_frame=800, backfilled=800)
    return tl


def everything():
    """One timeline showing every pattern once, for precedence and determinism checks."""
    tl = TimelineBuilder()
    # upgrade-deadlock: b read, then refused; a's COMMIT then waits on b's SHARED.
    a, b = tl.conn("a"), tl.conn("b")
    tl.read_hold(b, 0, 5500, released_by="ROLLBACK")
    tl.write_hold(a, 5, 5200)
    tl.wait(b, 10, 10.2, failed=True, handler_calls=0, had_read=True)
    tl.wait(a, 20, 5020, failed=True, handler_calls=40, phase="commit")
    # self-deadlock: two tasks on one thread.
    s1, s2 = tl.conn("s1", thread=77, task="t1"), tl.conn("s2", thread=77, task="t2")
    tl.write_hold(s1, 10_000, 16_000)
    tl.wait(s2, 10_100, 15_100, failed=True, handler_calls=40)
    # no-busy-timeout.
    z = tl.conn("z", timeout_ms=0)
    tl.wait(z, 10_200, 10_200.1, failed=True, handler_calls=0, phase="begin")
    # long-write-transaction: another thread waits on s1's long hold too.
    lw = tl.conn("lw")
    tl.wait(lw, 10_300, 15_300, failed=True, handler_calls=40)
    # reader-blocks-writer.
    r, w = tl.conn("r"), tl.conn("w", timeout_ms=2000)
    tl.read_hold(r, 20_000, 23_000)
    tl.write_hold(w, 20_100, 22_300)
    tl.wait(w, 20_200, 22_200, failed=True, handler_calls=30, phase="commit")
    # write-convoy.
    cs = [tl.conn(f"c{i:02d}", timeout_ms=1000) for i in range(30)]
    for i, c in enumerate(cs):
        tl.write_hold(c, 30_000 + i * 40, 30_000 + i * 40 + 30)
    starved = tl.conn("starved", timeout_ms=1000)
    tl.wait(starved, 30_010, 31_010, failed=True, handler_calls=30)
    # external-holder: nobody recorded holds the lock; pid 4242 does.
    ext = tl.conn("ext", timeout_ms=1000)
    outside = tl.wait(ext, 40_000, 41_000, failed=True, handler_calls=20)
    tl.os_sample(outside, 40_008, (4242, "RESERVED"))
    # table-locked: a shared-cache reader and a writer of the same table.
    reader, writer = tl.conn("sc-reader"), tl.conn("sc-writer")
    tl.open_statement(reader, "SELECT * FROM item", 50_000, 50_010)
    tl.locked(writer, 50_005, "INSERT INTO item VALUES (1)", "database table is locked: item", 262)
    return tl


def test_healthy_wal_workload_gives_no_findings():
    assert diagnose(healthy().build()) == []


def test_healthy_rollback_workload_gives_no_findings():
    assert diagnose(healthy("delete").build()) == []


def test_empty_timeline_gives_no_findings():
    assert diagnose(TimelineBuilder().build()) == []


def test_each_problem_is_reported_once_under_its_cause():
    findings = diagnose(everything().build())
    by_pattern = {f.pattern: f for f in findings}
    not_here = ("checkpoint-starvation", "network-filesystem", "unexplained-busy")
    assert sorted(by_pattern) == sorted(p for p in PRECEDENCE if p not in not_here)
    assert len(findings) == len(by_pattern)
    assert by_pattern["upgrade-deadlock"].facts["winner_commit_failures"] == 1
    assert by_pattern["self-deadlock"].facts["pairs"] == [["s2", "s1"]]
    assert by_pattern["no-busy-timeout"].facts["failures"] == 1
    assert by_pattern["reader-blocks-writer"].facts["commit_waits"] == 1
    long_write = by_pattern["long-write-transaction"]
    assert long_write.facts["blocked_waits"] == 1  # lw only: s2 is the self-deadlock
    assert long_write.facts["worst"]["waiter_conn"] == "lw"
    assert by_pattern["write-convoy"].facts["timed_out_waits"] == 1
    assert by_pattern["external-holder"].facts["holder"]["pid"] == 4242
    assert by_pattern["table-locked"].facts["tables"] == ["item"]


def test_findings_are_sorted_most_harmful_first():
    findings = diagnose(everything().build())
    ranks = [f.rank for f in findings]
    assert ranks == sorted(ranks)


def test_same_input_gives_same_output_whatever_the_build_order():
    first = everything().build()
    reference = [f.to_json() for f in diagnose(first)]
    for seed in range(5):
        tl = everything()
        rng = random.Random(seed)
        for spans in (tl.waits, tl.write_holds, tl.read_holds, tl.calls):
            rng.shuffle(spans)
        names = list(tl.connections.items())
        rng.shuffle(names)
        tl.connections = dict(names)
        again = [f.to_json() for f in diagnose(tl.build())]
        assert json.dumps(again, sort_keys=True) == json.dumps(reference, sort_keys=True)


def test_findings_are_json_serialisable():
    """Each finding's JSON reads back as itself (no tuple turned list, no non-string key, no
    NaN) and carries the contract's fields (docs/json-report.md)."""
    findings = diagnose(everything().build())
    assert len(findings) == 8
    for f in findings:
        document = f.to_json()
        assert json.loads(json.dumps(document, allow_nan=False)) == document, f.pattern
        assert {"pattern", "severity", "confidence", "evidence", "advice"} <= set(document)
        assert document["pattern"] == f.pattern
        assert document["evidence"]["lines"] == list(f.evidence)


def test_wal_busy_snapshot_and_rollback_busy_both_become_upgrade_deadlock():
    for mode, code in (("delete", None), ("wal", SQLITE_BUSY_SNAPSHOT)):
        tl = TimelineBuilder(journal_mode=mode)
        b = tl.conn("b")
        tl.read_hold(b, 0, 30, released_by="ROLLBACK")
        tl.wait(b, 20, 20.1, failed=True, handler_calls=0, had_read=True, code=code)
        assert [f.pattern for f in diagnose(tl.build())] == ["upgrade-deadlock"]


def test_every_finding_names_a_pattern_and_gives_advice_with_snippets():
    for f in diagnose(everything().build()):
        assert f.pattern in PRECEDENCE
        assert f.advice and all(a.snippets for a in f.advice)
        assert f.evidence and f.explanation


def test_write_holders_during_matches_a_linear_scan():
    rng = random.Random(1)
    tl = TimelineBuilder()
    actors = [tl.conn(f"c{i}") for i in range(5)]
    for _ in range(300):
        t0 = rng.uniform(0, 1000)
        tl.write_hold(rng.choice(actors), t0, t0 + rng.choice((0.5, 5, 50, 400)))
    timeline = tl.build()
    for _ in range(300):
        t0 = rng.randint(0, 1_100_000_000)
        t1 = t0 + rng.choice((0, 1, 1000, 10_000_000, 300_000_000))
        exclude = rng.choice([None, "c1"])
        expected = [
            h for h in timeline.write_holds if h.t0 < t1 and h.t1 > t0 and h.holder.conn != exclude
        ]
        assert timeline.write_holders_during(t0, t1, exclude) == expected


def test_upgrade_deadlock_between_two_connections_of_one_thread_is_reported_once():
    tl = TimelineBuilder()
    a = tl.conn("a", thread=7)
    b = tl.conn("b", thread=7)
    tl.read_hold(b, 0, 9000, released_by="end-of-run")
    tl.write_hold(a, 5, 5200)
    tl.wait(b, 10, 10.2, failed=True, handler_calls=0, had_read=True)
    tl.wait(a, 20, 5020, failed=True, handler_calls=40, phase="commit")
    assert [f.pattern for f in diagnose(tl.build())] == ["upgrade-deadlock"]
