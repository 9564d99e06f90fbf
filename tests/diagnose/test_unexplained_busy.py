"""No unexplained failure, ever: a failed (or long) wait that no pattern claims is its own
finding, `unexplained-busy` (error, low confidence), with what was seen; and every failed or
long wait ends up in some finding."""

from __future__ import annotations

import random

from sqlite_lockprobe.diagnose import causes, unexplained_busy
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import SQLITE_BUSY_SNAPSHOT

from .builders import TimelineBuilder
from .test_detectors import everything


def lone_failure() -> TimelineBuilder:
    """A writer ran out of busy_timeout while no recorded connection held any lock, and the
    OS lock table was not read: who held it is not known."""
    tl = TimelineBuilder(journal_mode="wal")
    a = tl.conn("a", timeout_ms=1000)
    tl.wait(a, 10, 1010, failed=True, handler_calls=20, sql="INSERT INTO jobs VALUES (1)")
    return tl


def test_a_busy_failure_no_detector_claims_is_exactly_one_unexplained_busy() -> None:
    [f] = diagnose(lone_failure().build())
    assert f.pattern == "unexplained-busy"
    assert (f.severity, f.confidence) == ("error", "low")
    assert "cause not determined" in f.title
    assert f.facts["failed"] == 1 and f.facts["connections"] == ["a"]
    assert f.facts["codes"] == {"SQLITE_BUSY (5)": 1}
    evidence = "\n".join(f.evidence)
    assert "`INSERT INTO jobs VALUES (1)`" in evidence and "connection a" in evidence
    assert "failed with SQLITE_BUSY (5) after 1000.0 ms and 20 busy-handler calls" in evidence
    assert "no other recorded connection held a lock during it" in evidence
    assert "the OS lock table was not read during it" in evidence
    assert f.advice and all(a.snippets for a in f.advice)


def test_a_refusal_outside_a_read_then_write_transaction_is_unexplained() -> None:
    tl = TimelineBuilder()
    a, b = tl.conn("a"), tl.conn("b")
    tl.write_hold(a, 0, 50)
    tl.wait(b, 10, 10.1, failed=True, handler_calls=0, phase="begin")
    [f] = diagnose(tl.build())
    assert f.pattern == "unexplained-busy"
    evidence = "\n".join(f.evidence)
    assert "without calling the busy handler" in evidence
    assert "open during it: the RESERVED lock held by worker-a" in evidence


def test_what_the_os_lock_table_showed_is_evidence() -> None:
    tl = lone_failure()
    tl.os_sample(tl.waits[0], 500)  # read during the wait: nobody held a lock
    [f] = diagnose(tl.build())
    assert f.pattern == "unexplained-busy"
    assert any("showed no lock held by anyone" in line for line in f.evidence)


def test_a_long_wait_nobody_explains_is_an_unexplained_warning() -> None:
    tl = TimelineBuilder()
    a = tl.conn("a", timeout_ms=1000)
    tl.wait(a, 0, 700, handler_calls=12)
    [f] = diagnose(tl.build())
    assert (f.pattern, f.severity, f.confidence) == ("unexplained-busy", "warning", "low")
    assert any("used 70 % of busy_timeout: 30 % margin" in line for line in f.evidence)


def test_a_claimed_failure_is_never_also_unexplained() -> None:
    timeline = everything().build()
    assert unexplained_busy.detect(timeline) == []
    tl = everything()
    lone = tl.conn("lone", timeout_ms=1000)
    tl.wait(lone, 60_000, 61_000, failed=True, handler_calls=20)
    findings = diagnose(tl.build())
    [f] = [f for f in findings if f.pattern == "unexplained-busy"]
    assert f.facts["connections"] == ["lone"]
    assert len(findings) == len({f.pattern for f in findings})


def random_timeline(seed: int) -> TimelineBuilder:
    """Holds, waits (failed, long, short, refused), timeouts and modes drawn at random."""
    rng = random.Random(seed)
    tl = TimelineBuilder(journal_mode=rng.choice(("delete", "wal")))
    actors = [
        tl.conn(f"c{i}", timeout_ms=rng.choice((0, 20, 200, 1000, 5000)), thread=rng.randint(1, 4))
        for i in range(6)
    ]
    for _ in range(rng.randint(0, 12)):
        t0 = rng.uniform(0, 3000)
        tl.write_hold(rng.choice(actors), t0, t0 + rng.choice((1, 20, 400, 2500)))
    for _ in range(rng.randint(0, 6)):
        t0 = rng.uniform(0, 3000)
        tl.read_hold(rng.choice(actors), t0, t0 + rng.choice((1, 50, 1500)))
    for _ in range(rng.randint(1, 8)):
        waiter = rng.choice(actors)
        timeout = tl.timeouts[waiter.conn]
        t0 = rng.uniform(0, 3000)
        length = rng.choice((0.1, 5, 0.3 * timeout, 0.6 * timeout, timeout))
        failed = rng.random() < 0.5
        tl.wait(
            waiter,
            t0,
            t0 + length,
            failed=failed,
            handler_calls=rng.choice((0, 3, 30)),
            phase=rng.choice(("begin", "read", "write", "commit", "other")),
            had_read=rng.random() < 0.3,
            code=SQLITE_BUSY_SNAPSHOT if failed and rng.random() < 0.1 else None,
        )
    return tl


def test_every_failed_or_long_wait_is_in_a_finding_and_only_one() -> None:
    for seed in range(300):
        timeline = random_timeline(seed).build()
        findings = diagnose(timeline)
        patterns = {f.pattern for f in findings}
        owners = causes.wait_causes(timeline)
        for wait in timeline.waits:
            if not causes.is_harmful(wait):
                continue
            owner = owners[id(wait)] or "unexplained-busy"
            assert owner in patterns, (seed, wait)
        if any(causes.is_harmful(w) for w in timeline.waits):
            assert findings, seed  # never "no lock problems found"
        assert len(findings) == len(patterns) or "external-holder" in patterns
