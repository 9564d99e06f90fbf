"""Trace overhead: the same small program run bare, with the issue's floor, and under
`lockprobe trace` with the compiled probe and with its pure-Python twin, interleaved; the
program times its own loop, so lockprobe's start-up and report are not counted.

    python benchmarks/bench_trace_overhead.py [--commits 5000] [--rounds 31]
        [--workloads loop,write,read]

Variants, one process each per round, their order rotated from round to round:
- `bare`: the program as it is;
- `floor`: the issue's floor, the same program with a flag: a sqlite3.Connection subclass
  whose execute calls the parent and appends one (t0, t1, sql, thread) tuple;
- `compiled`: under `lockprobe trace`, the compiled fast path (sqlite_lockprobe.probe._speedups);
- `python`: under `lockprobe trace` with LOCKPROBE_PURE_PYTHON=1, the pure-Python twin.

Workloads: `loop`, the issue's tight single writer (WAL, synchronous=NORMAL, BEGIN IMMEDIATE /
INSERT / COMMIT: 3 calls a transaction); `write` (BEGIN IMMEDIATE, INSERT, UPDATE, COMMIT: 4
calls); `read` (one SELECT by primary key per call, fetchone: the cheapest call there is).
Per round, each variant's throughput over bare's is one ratio; the medians of those ratios are
printed (a loaded machine moves whole rounds; the ratio within a round moves less).
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

from sqlite_lockprobe.sources.trace import trace_environment

PROGRAM = """
import sqlite3, sys, threading, time
db, workload, n, floor = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "floor"
factory = sqlite3.Connection
if floor:
    _execute = sqlite3.Connection.execute
    monotonic_ns, get_ident = time.monotonic_ns, threading.get_ident
    records = []
    append = records.append

    class Floor(sqlite3.Connection):
        def execute(self, sql, parameters=(), /):
            t0 = monotonic_ns()
            cursor = _execute(self, sql, parameters)
            append((t0, monotonic_ns(), sql, get_ident()))
            return cursor

    factory = Floor
conn = sqlite3.connect(db, isolation_level=None, factory=factory)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=NORMAL")
conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
conn.execute("INSERT INTO t (v) VALUES (0)")
execute = conn.execute
start = time.perf_counter()
if workload == "loop":
    for i in range(n):
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO t (v) VALUES (?)", (i,))
        execute("COMMIT")
    calls = 3 * n
elif workload == "write":
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

VARIANTS = ("bare", "floor", "compiled", "python")
CALLS_PER_UNIT = {"loop": 3, "write": 4, "read": 1}


def run_program(program: Path, workdir: Path, workload: str, n: int, variant: str) -> float:
    """Seconds the program's loop took."""
    db = workdir / f"{workload}-{variant}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    command = [sys.executable, str(program), str(db), workload, str(n), variant]
    env = {k: v for k, v in os.environ.items() if k != "LOCKPROBE_PURE_PYTHON"}
    if variant in ("compiled", "python"):
        command = [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--", *command]
    if variant == "python":
        env["LOCKPROBE_PURE_PYTHON"] = "1"
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    _, seconds = out.splitlines()[0].split()
    return float(seconds)


def probe_path_of(program: Path, workdir: Path) -> str:
    """The probe path a traced run reports (so 'compiled' is not the Python path unnoticed)."""
    report = workdir / "report.json"
    db = workdir / "probe.db"
    subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--json", str(report), "--",
         sys.executable, str(program), str(db), "read", "10", "bare"],
        capture_output=True, check=True, env={k: v for k, v in os.environ.items()
                                              if k != "LOCKPROBE_PURE_PYTHON"},
    )  # fmt: skip
    import json

    return str(json.loads(report.read_text())["trace"].get("probe_path"))


def startup_seconds(env: dict[str, str] | None, repeats: int = 20) -> float:
    """Median wall time of `python -c pass`."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(program: Path, workdir: Path, workload: str, n: int, rounds: int) -> None:
    calls = CALLS_PER_UNIT[workload] * n
    for variant in VARIANTS:
        run_program(program, workdir, workload, min(n, 500), variant)  # warm up
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            seconds[variant].append(run_program(program, workdir, workload, n, variant))
    print(f"{workload}: {calls:,} calls per run, {rounds} rounds interleaved (order rotated)")
    bare = seconds["bare"]
    for variant in VARIANTS:
        s = statistics.median(seconds[variant])
        line = f"  {variant:<9} median {calls / s:>9,.0f} calls/s ({s * 1e6 / calls:.2f} us/call)"
        if variant != "bare":
            ratios = sorted(b / v for b, v in zip(bare, seconds[variant], strict=True))
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            line += (
                f"  ratio to bare: median {statistics.median(ratios):.3f} "
                f"(quartiles {q1:.3f}-{q3:.3f}); "
                f"+{(s - statistics.median(bare)) * 1e6 / calls:.2f} us/call"
            )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=5000, help="transactions / reads")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--workloads", default="loop,write,read")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        workdir = Path(tmp)
        program = workdir / "program.py"
        program.write_text(PROGRAM)
        print(f"CPython {sys.version.split()[0]}; compiled runs report probe path "
              f"{probe_path_of(program, workdir)!r}")  # fmt: skip
        for workload in args.workloads.split(","):
            n = args.commits * (5 if workload == "read" else 1)
            measure(program, workdir, workload, n, args.rounds)
        if args.no_startup:
            return
        env = trace_environment(str(workdir), ["python", "-c", "pass"], None)
        plain = startup_seconds(dict(os.environ))
        injected = startup_seconds(env)
        print(
            f"start-up of `python -c pass`: bare {plain * 1000:.1f} ms, "
            f"probe injected {injected * 1000:.1f} ms (+{(injected - plain) * 1000:.1f} ms)"
        )


if __name__ == "__main__":
    main()
