"""How long diagnose() takes on a timeline the size a 1,000,000-event log produces.

    python benchmarks/bench_diagnose.py [--waits 100000] [--holds 100000] [--repeat 3]

Builds a synthetic rollback-journal timeline: 64 writer connections taking turns on the write
lock (short holds, a few long ones), busy waits that mostly succeed within milliseconds, some
that time out (a convoy, long holders), readers with SHARED locks, and prints the time
diagnose() took and the findings it gave.
"""

from __future__ import annotations

import argparse
import random
import time

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import (
    NS_PER_MS,
    SQLITE_BUSY,
    Actor,
    BusyWait,
    Call,
    ConnectionInfo,
    LockHold,
    Timeline,
)

WRITERS = 64
READERS = 16
TIMEOUT_MS = 1000


def build(n_waits: int, n_holds: int, seed: int = 7) -> Timeline:
    rng = random.Random(seed)
    writers = [Actor(f"w{i}", f"writer-{i}", "writers", 1000 + i % 8, i) for i in range(WRITERS)]
    readers = [Actor(f"r{i}", f"reader-{i}", "readers", 2000, 100 + i) for i in range(READERS)]
    connections = {
        a.conn: ConnectionInfo(a.conn, a.group, a.pid, TIMEOUT_MS, "", "delete")
        for a in writers + readers
    }
    write_holds: list[LockHold] = []
    t = 0
    for i in range(n_holds):
        length = rng.choice((1, 2, 3, 5)) * NS_PER_MS
        if i % 5000 == 4999:
            length = 3000 * NS_PER_MS  # an occasional long write transaction
        holder = writers[i % WRITERS]
        write_holds.append(
            LockHold(
                holder,
                "write",
                t,
                t + length,
                "INSERT INTO t VALUES (?)",
                "COMMIT",
                in_statements_ns=length // 2,
            )
        )
        t += length + rng.randint(0, 2) * NS_PER_MS
    end = t
    read_holds = []
    for i in range(n_holds // 10):
        t0 = rng.randint(0, end)
        read_holds.append(
            LockHold(
                readers[i % READERS],
                "read",
                t0,
                t0 + rng.randint(1, 20) * NS_PER_MS,
                "SELECT * FROM t",
                "COMMIT",
            )
        )
    read_holds.sort(key=lambda h: (h.t0, h.holder.conn))
    waits = []
    calls = []
    for _ in range(n_waits):
        waiter = writers[rng.randrange(WRITERS)]
        t0 = rng.randint(0, end)
        failed = rng.random() < 0.02
        duration = TIMEOUT_MS * NS_PER_MS if failed else rng.randint(1, 30) * NS_PER_MS
        phase = rng.choice(("begin", "write", "write", "commit"))
        call = Call(
            waiter,
            t0,
            t0 + duration,
            "execute",
            "UPDATE t SET n = n + 1",
            busy_calls=12,
            error=SQLITE_BUSY if failed else None,
        )
        calls.append(call)
        waits.append(BusyWait(waiter, call, 12, failed, TIMEOUT_MS, False, phase))
    waits.sort(key=lambda w: (w.t0, w.waiter.conn))
    calls.sort(key=lambda c: (c.t0, c.conn))
    return Timeline(
        connections=connections,
        calls=tuple(calls),
        waits=tuple(waits),
        write_holds=tuple(write_holds),
        read_holds=tuple(read_holds),
        journal_mode="delete",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=100_000)
    parser.add_argument("--holds", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    t0 = time.perf_counter()
    timeline = build(args.waits, args.holds)
    built = time.perf_counter() - t0
    print(
        f"timeline: {len(timeline.waits)} waits, {len(timeline.write_holds)} write holds, "
        f"{len(timeline.read_holds)} read holds (built in {built:.2f} s)"
    )
    best = float("inf")
    findings = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        findings = diagnose(timeline)
        best = min(best, time.perf_counter() - t0)
    print(f"diagnose(): best of {args.repeat}: {best:.2f} s")
    for f in findings:
        print(f"  {f.pattern:24} {f.severity:8} {f.confidence:7} {f.evidence[0]}")


if __name__ == "__main__":
    main()
