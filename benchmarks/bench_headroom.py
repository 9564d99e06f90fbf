"""Load generator headroom: lockprobe's engine (one thread worker, with and without the
probe) against a minimal hand-written Python loop doing the same statements on the same kind
of database, interleaved in one process.

    python benchmarks/bench_headroom.py [--commits 20000] [--rounds 5]

Issue 7 target: the engine's commit rate >= 0.9 of the hand-written loop.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench_probe_overhead import WORKLOAD, commits_per_second


def hand_written(commits: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "hand.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute("INSERT INTO t (v) VALUES (0)")
        params = {"worker": 0, "group": "writer", "pid": 0, "iteration": 0}
        start = time.perf_counter()
        for i in range(commits):
            params["iteration"] = i
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (:iteration)", params)
            conn.execute("UPDATE t SET v = v + 1 WHERE id = 1", params)
            conn.commit()
        elapsed = time.perf_counter() - start
        conn.close()
    return commits / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    assert "BEGIN" in WORKLOAD.upper()
    hand, bare, probed = [], [], []
    hand_written(1000)
    for _ in range(args.rounds):
        hand.append(hand_written(args.commits))
        bare.append(commits_per_second(args.commits, False))
        probed.append(commits_per_second(args.commits, True))
    print(f"{'hand-written loop':18} median {statistics.median(hand):8,.0f} commits/s")
    for name, values in (("engine, no probe", bare), ("engine, probed", probed)):
        # Each round's ratio to the hand-written loop run just before it: load on a shared
        # machine drifts between rounds, much less within one.
        ratios = [v / h for v, h in zip(values, hand, strict=True)]
        print(
            f"{name:18} median {statistics.median(values):8,.0f} commits/s  ratio to "
            f"hand-written: median {statistics.median(ratios):.3f} "
            f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print("target: engine >= 0.9 of the hand-written loop")


if __name__ == "__main__":
    main()
