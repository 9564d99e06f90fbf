"""Probe overhead: the same uncontended single-writer workload through the run engine, with
and without the probe's hooks, interleaved in one process; prints the throughput ratio.

    python benchmarks/bench_probe_overhead.py [--commits 20000] [--rounds 5] [--threads 8]

Targets (issues 2 and 7): probed / bare commits per second >= 0.95 for one uncontended
writer; >= 0.90 for 8 contending writer threads (--threads 8: the busy handler then runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

from sqlite_lockprobe.analysis import analyze
from sqlite_lockprobe.runner import run_scenario
from sqlite_lockprobe.scenario import parse_scenario

WORKLOAD = """
name = "single-writer"
[database]
journal_mode = "wal"
synchronous = "normal"
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)", "INSERT INTO t (v) VALUES (0)"]

[[group]]
name = "writer"
count = {threads}
repeat = {commits}
steps = [
  {{ begin = "immediate" }},
  {{ write = "INSERT INTO t (v) VALUES (:iteration)" }},
  {{ write = "UPDATE t SET v = v + 1 WHERE id = 1" }},
  "commit",
]
"""


def measure(commits: int, instrument: bool, threads: int = 1) -> tuple[float, float]:
    """(commits per second, CPU microseconds per commit) of `threads` writers doing `commits`
    transactions in all. CPU time (all threads of this process) is far less disturbed by
    other load on a shared machine than wall-clock throughput."""
    text = WORKLOAD.format(commits=commits // threads, threads=threads)
    cpu0 = time.process_time()
    result = run_scenario(parse_scenario(text), instrument=instrument)
    cpu = time.process_time() - cpu0
    summary = analyze(result.events).summary
    assert summary.total.commits == commits // threads * threads, summary.total
    return summary.total.commits_per_second, cpu / summary.total.commits * 1e6


def commits_per_second(commits: int, instrument: bool, threads: int = 1) -> float:
    return measure(commits, instrument, threads)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    bare, probed, bare_cpu, probed_cpu = [], [], [], []
    measure(1000, True)  # warm up imports and the file system
    for _ in range(args.rounds):
        rate, cpu = measure(args.commits, False, args.threads)
        bare.append(rate)
        bare_cpu.append(cpu)
        rate, cpu = measure(args.commits, True, args.threads)
        probed.append(rate)
        probed_cpu.append(cpu)
    b, p = statistics.median(bare), statistics.median(probed)
    print(f"bare:   median {b:,.0f} commits/s  ({', '.join(f'{x:,.0f}' for x in bare)})")
    print(f"probed: median {p:,.0f} commits/s  ({', '.join(f'{x:,.0f}' for x in probed)})")
    ratios = [pp / bb for bb, pp in zip(bare, probed, strict=True)]
    target = 0.95 if args.threads == 1 else 0.90
    print(
        f"ratio probed/bare ({args.threads} writer threads): median "
        f"{statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"target >= {target}"
    )
    bc, pc = statistics.median(bare_cpu), statistics.median(probed_cpu)
    print(
        f"CPU per commit (all threads, includes run set-up): bare {bc:.1f} us, probed "
        f"{pc:.1f} us; as a throughput ratio bare/probed {bc / pc:.3f}"
    )


if __name__ == "__main__":
    main()
