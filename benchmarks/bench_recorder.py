"""The in-process recorder (`sqlite_lockprobe.record()`): what it costs a call, how many events
a second it records, and how much memory an event kept in its ring takes.

    python benchmarks/bench_recorder.py [--transactions 20000] [--rounds 5]

Two workloads on one connection to a WAL database in a temporary directory:
- `loop`: BEGIN IMMEDIATE / INSERT with a parameter / COMMIT, three calls a transaction
  (each recorded as a 7-field short record);
- `script`: the same transaction as one executescript call (one SQL text), whose record keeps
  the three statements SQLite ran (a new tuple of new strings each time).

Per workload, interleaved round after round: bare, recorded with a ring large enough to keep
everything, and recorded into a ring of 1,000 (dropping all but the last: the cost of a full
ring). It prints medians of calls/s, the recorded events/s, and the recorder's cost per call.
The ring's own part: `EventRing.append` of a short record, next to a bare `list.append` (what
an event file's pending list costs), timed alone.
Memory: tracemalloc's traced bytes grown while a ring fills with N events (after a warm-up, so
caches are full), divided by N; SQLite's own memory is not Python's and is not counted.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import sqlite_lockprobe


def prepare(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.commit()
    conn.close()


def loop(conn: sqlite3.Connection, transactions: int) -> int:
    for i in range(transactions):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (i,))
        conn.execute("COMMIT")
    return 3 * transactions


def script(conn: sqlite3.Connection, transactions: int) -> int:
    for _ in range(transactions):
        conn.executescript("BEGIN IMMEDIATE; INSERT INTO t (v) VALUES (1); COMMIT;")
    return transactions


WORKLOADS: dict[str, Callable[[sqlite3.Connection, int], int]] = {"loop": loop, "script": script}


def timed(db: Path, work: Callable[[sqlite3.Connection, int], int], n: int) -> tuple[float, int]:
    """(seconds, calls) of `work` on a connection opened now (by whatever connect is now)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = normal")
    work(conn, 10)  # warm-up: call-site caches, SQL classification
    gc.collect()
    t0 = time.perf_counter()
    calls = work(conn, n)
    seconds = time.perf_counter() - t0
    conn.close()
    return seconds, calls


def one_round(db: Path, work: Callable[[sqlite3.Connection, int], int], n: int) -> dict[str, float]:
    seconds, calls = timed(db, work, n)
    out = {"bare": calls / seconds}
    for label, size in (("recorded", 10 * n + 100), ("full ring", 1000)):
        with sqlite_lockprobe.record(max_events=size) as rec:
            seconds, calls = timed(db, work, n)
        events = len(rec.events())
        out[label] = calls / seconds
        out[f"{label} events/s"] = (events + rec.dropped) / seconds
    return out


def bytes_per_event(db: Path, work: Callable[[sqlite3.Connection, int], int], n: int) -> float:
    with sqlite_lockprobe.record(max_events=10 * n + 100) as rec:
        conn = sqlite3.connect(db, isolation_level=None)
        work(conn, 10)
        before_events = len(rec._ring._ring)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        work(conn, n)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        kept = len(rec._ring._ring) - before_events
        conn.close()
    return (after - before) / kept


def append_cost() -> tuple[float, float]:
    """ns per append of one short record: (EventRing.append, list.append)."""
    from sqlite_lockprobe.recorder import EventRing

    record = (time.monotonic_ns(), time.monotonic_ns(), 8, "SELECT 1", None, False, None)
    n = 1_000_000
    results = []
    for append in (EventRing(1000).append, [].append):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                append(record)
            best = min(best, (time.perf_counter_ns() - t0) / n)
        results.append(best)
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from sqlite_lockprobe.probe.traced import PROBE_PATH

    print(
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, probe path "
        f"{PROBE_PATH}; {args.transactions:,} transactions, {args.rounds} rounds (medians)"
    )
    ring_ns, list_ns = append_cost()
    print(
        f"append  EventRing {ring_ns:.0f} ns, list.append {list_ns:.0f} ns (best of 5, with loop)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp:
        db = Path(tmp) / "bench.db"
        prepare(db)
        for name, work in WORKLOADS.items():
            rounds = [one_round(db, work, args.transactions) for _ in range(args.rounds)]
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            cost = 1e6 / med["recorded"] - 1e6 / med["bare"]
            cost_full = 1e6 / med["full ring"] - 1e6 / med["bare"]
            memory = bytes_per_event(db, work, min(args.transactions, 20_000))
            print(
                f"{name:7} bare {med['bare']:>9,.0f} calls/s | recorded {med['recorded']:>9,.0f} "
                f"calls/s ({med['recorded'] / med['bare']:.2f} of bare, +{cost:.2f} us/call), "
                f"{med['recorded events/s']:,.0f} events/s | full ring {med['full ring']:,.0f} "
                f"calls/s (+{cost_full:.2f} us/call) | {memory:.0f} bytes/event"
            )


if __name__ == "__main__":
    main()
