"""What reading the OS lock table during busy waits costs (external-holder, issue 10).

    python benchmarks/bench_holder_sampling.py [--samples 2000] [--rounds 5] [--threads 8]

1. One reading (`locktable.sample_holders`) with this machine's /proc/locks, and with a
   synthetic /proc/locks of 10,000 unrelated lock lines (a busy server).
2. A contended workload (threads writing with short transactions) through the run engine,
   interleaved with the readings on and off: commits per second and the readings taken.
   The uncontended path never reaches the busy handler, so it reads nothing
   (bench_probe_overhead.py measures that path).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.probe import capi as probe
from sqlite_lockprobe.probe import locktable
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import parse_scenario

CONTENDED = """
name = "contended-writers"
[database]
journal_mode = "delete"
busy_timeout_ms = 5000
transaction_mode = "immediate"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"]

[[group]]
name = "writer"
count = {threads}
repeat = 200
steps = [{{ write = "INSERT INTO t (v) VALUES (:iteration)" }}, "commit"]
"""


def time_one_reading(samples: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        db = os.path.join(workdir, "app.db")
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("BEGIN IMMEDIATE")  # something to find: this process holds RESERVED
        synthetic = os.path.join(workdir, "locks")
        with open(synthetic, "w") as out:
            for i in range(10_000):
                out.write(f"{i + 1}: POSIX  ADVISORY  WRITE {1000 + i} 08:02:{i} 0 EOF\n")
        for label, table in (
            ("this machine's /proc/locks", "/proc/locks"),
            ("10,000-line /proc/locks", synthetic),
        ):
            start = time.perf_counter()
            for _ in range(samples):
                locktable.sample_holders(db, table)
            per = (time.perf_counter() - start) / samples * 1e6
            print(f"one reading, {label}: {per:.0f} us")
        conn.rollback()
        conn.close()


def contended(threads: int, sampling: bool) -> tuple[float, int]:
    saved = probe.HOLDERS_FIRST_RETRY
    probe.HOLDERS_FIRST_RETRY = saved if sampling else 1_000_000
    try:
        result = run_scenario(parse_scenario(CONTENDED.format(threads=threads)))
    finally:
        probe.HOLDERS_FIRST_RETRY = saved
    readings = sum(1 for e in result.events if e["k"] == "holders")
    return analyze(result.events).summary.total.commits_per_second, readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    time_one_reading(args.samples)
    on, off, taken = [], [], []
    for _ in range(args.rounds):
        rate, readings = contended(args.threads, True)
        on.append(rate)
        taken.append(readings)
        off.append(contended(args.threads, False)[0])
    print(
        f"{args.threads} contending writer threads: {statistics.median(off):.0f} commits/s "
        f"without readings, {statistics.median(on):.0f} with "
        f"(ratio {statistics.median(on) / statistics.median(off):.3f}); "
        f"{statistics.median(taken):.0f} readings per run of {args.threads * 200} commits"
    )


if __name__ == "__main__":
    main()
