"""Scale: 1000 coroutines (the aiosqlite seed), 200 threads and 16 processes run to completion
with every event recorded; peak memory; and the recorder's cost per event.

    python benchmarks/bench_scale.py

"Every event recorded" is checked, not assumed: each worker's calls in the merged log must
equal the operations it counted itself (its worker_end event), and every connection opened
must be closed.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.events.eventfile import EventFile
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import builtin_dir, parse_scenario

THREADS = """
[database]
journal_mode = "wal"
synchronous = "normal"
busy_timeout_ms = 10000
transaction_mode = "immediate"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"]

[[group]]
name = "{name}"
kind = "{kind}"
count = {count}
repeat = {repeat}
steps = [{{ write = "INSERT INTO t (v) VALUES (:worker)" }}, "commit"]
"""


def check_complete(events: list[dict]) -> tuple[int, int]:
    calls = Counter(e["worker"] for e in events if e["k"] == "call")
    ends = {e["worker"]: e["ops"] for e in events if e["k"] == "worker_end"}
    assert ends and all(calls[w] == ops for w, ops in ends.items()), "events were lost"
    kinds = Counter(e["k"] for e in events)
    assert kinds["open"] == kinds["close"], "a connection was left open"
    return len(ends), len(events)


def aiosqlite_seed() -> str:
    """The built-in aiosqlite scenario at the seed's own size: 1000 coroutines, 5 s timeout."""
    text = (builtin_dir() / "aiosqlite-convoy.toml").read_text()
    return text.replace("count = 300", "count = 1000").replace(
        "busy_timeout_ms = 500", "busy_timeout_ms = 5000"
    )


def run(label: str, scenario_text: str) -> None:
    scenario = parse_scenario(scenario_text)
    start = time.perf_counter()
    result = run_scenario(scenario)
    elapsed = time.perf_counter() - start
    workers, events = check_complete(result.events)
    total = analyze(result.events).summary.total
    print(
        f"{label:28} {elapsed:6.2f} s  workers {workers:5}  events {events:8,}  "
        f"commits {total.commits:6}  BUSY {total.busy_errors:5}  all recorded"
    )


def recorder_cost(n: int = 500_000) -> None:
    """ns and bytes per event for the two kinds of call record: the run engine's short one (a
    call that went through: its own statement, no wait) and the full one `trace` writes."""
    sql = "INSERT INTO t (v) VALUES (:iteration)"
    t = time.monotonic_ns()
    # Distinct tuples with real clock values, as the workers emit them (marshal writes a
    # repeated object once: one tuple emitted n times would understate the size).
    kinds = {
        "run engine, short": lambda i: (t + 10_000 * i, 7_000 + i % 500, 17, True),
        "trace, full": lambda i: (
            "call",
            t + 10_000 * i,
            t + 10_000 * i + 7_000,
            "c1.1",
            "w#0",
            123,
            None,
            "write",
            sql,
            (f"INSERT INTO t (v) VALUES ({i})",),  # the trace hook's expanded SQL
            0,
            None,
            None,
            None,
            True,
            None,
        ),
    }
    for kind, make in kinds.items():
        records = [make(i) for i in range(n)]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.lpk"
            recorder = EventFile(path)
            start = time.perf_counter_ns()
            for record in records:
                recorder.append(record)
            emitted = time.perf_counter_ns()
            recorder.close()
            done = time.perf_counter_ns()
            size = path.stat().st_size
        print(
            f"recorder ({kind}): emit {(emitted - start) / n:.0f} ns/event on the hot path, "
            f"{(done - emitted) / n:.0f} ns/event to write later, {size / n:.0f} bytes/event"
        )


def main() -> None:
    recorder_cost()
    run("1000 coroutines (aiosqlite)", aiosqlite_seed())
    run("200 threads", THREADS.format(name="t", kind="thread", count=200, repeat=20))
    run("16 processes", THREADS.format(name="p", kind="process", count=16, repeat=200))
    # Only the lockprobe process: a spawned worker's ru_maxrss counts the parent's pages it
    # shared between fork and exec, so RUSAGE_CHILDREN would overstate it.
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of the lockprobe process over all three runs: {self_kb / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
