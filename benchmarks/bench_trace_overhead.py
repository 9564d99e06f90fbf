"""Trace overhead: the same small program run bare and under `lockprobe trace`, interleaved;
the program times its own loop, so lockprobe's start-up and report are not counted.

    python benchmarks/bench_trace_overhead.py [--commits 20000] [--rounds 5]

Two workloads: `write` (BEGIN IMMEDIATE, INSERT, UPDATE, COMMIT per transaction: 4 calls)
and `read` (one SELECT by primary key per call, fetchone: the cheapest call there is, so the
worst ratio). Prints calls/s, the ratio traced/bare, and the cost per call in microseconds.
Also: interpreter start-up with the probe injected and no sqlite3 use (`python -c pass`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlite_lockprobe.tracing import trace_environment

PROGRAM = """
import sqlite3, sys, time
db, workload, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
conn.execute("INSERT INTO t (v) VALUES (0)")
execute = conn.execute
start = time.perf_counter()
if workload == "write":
    for i in range(n):
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO t (v) VALUES (?)", (i,))
        execute("UPDATE t SET v = v + 1 WHERE id = 1")
        execute("COMMIT")
    calls = 4 * n
else:
    for i in range(n):
        execute("SELECT v FROM t WHERE id = ?", (1,)).fetchone()
    calls = n
print(calls, time.perf_counter() - start)
"""


def run_program(program: Path, workdir: Path, workload: str, n: int, traced: bool) -> float:
    """Seconds the program's loop took."""
    db = workdir / f"{workload}-{'traced' if traced else 'bare'}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    command = [sys.executable, str(program), str(db), workload, str(n)]
    if traced:
        command = [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    _, seconds = out.splitlines()[0].split()
    return float(seconds)


def startup_seconds(env: dict[str, str] | None, repeats: int = 20) -> float:
    """Median wall time of `python -c pass`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=20000, help="transactions / reads")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        workdir = Path(tmp)
        program = workdir / "program.py"
        program.write_text(PROGRAM)
        for workload, n in (("write", args.commits), ("read", args.commits * 5)):
            calls = 4 * n if workload == "write" else n
            run_program(program, workdir, workload, 1000, True)  # warm up
            bare, traced = [], []
            for _ in range(args.rounds):
                bare.append(run_program(program, workdir, workload, n, False))
                traced.append(run_program(program, workdir, workload, n, True))
            b, t = statistics.median(bare), statistics.median(traced)
            ratios = [bb / tt for bb, tt in zip(bare, traced, strict=True)]
            print(f"{workload}: {calls:,} calls per run, {args.rounds} rounds interleaved")
            print(f"  bare:   median {calls / b:,.0f} calls/s ({b * 1e6 / calls:.2f} us/call)")
            print(f"  traced: median {calls / t:,.0f} calls/s ({t * 1e6 / calls:.2f} us/call)")
            print(
                f"  ratio traced/bare throughput: median {statistics.median(ratios):.3f} "
                f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}); "
                f"cost {(t - b) * 1e6 / calls:.2f} us per call"
            )
        env = trace_environment(str(workdir), ["python", "-c", "pass"], None)
        plain = startup_seconds(dict(os.environ))
        injected = startup_seconds(env)
        print(
            f"start-up of `python -c pass`: bare {plain * 1000:.1f} ms, "
            f"probe injected {injected * 1000:.1f} ms (+{(injected - plain) * 1000:.1f} ms)"
        )


if __name__ == "__main__":
    main()
