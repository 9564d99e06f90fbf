"""The whole diagnosis pipeline on a large event log: JSONL reading, timeline, summary and
detectors, with time and peak memory.

    python benchmarks/bench_pipeline.py [--events 1000000] [--parts]

Issue 3/7 target: a 1,000,000-event log diagnosed in a few seconds, with memory that does
not grow with the log beyond what the findings need. The log is synthetic but shaped like a
real run: 16 connections in 4 processes doing BEGIN IMMEDIATE / INSERT / UPDATE / COMMIT,
with a contended stretch (busy waits, a few timeouts) every 5,000 transactions.

Times are wall and CPU (process) time; CPU time is the one to compare on a shared machine.
`--parts` then times the parts in separate passes over the same log: reading alone, reading
and building the timeline (which counts for the summary on the way), then the summary and
the detectors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_lockprobe.diagnose.activity import ActivityCounter
from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.stats import summarize
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.events.records import stream_event_log
from sqlite_lockprobe.probe.gctuning import fewer_collections


def write_log(path: Path, n_events: int) -> int:
    """Synthesize `n_events` events; returns how many were written."""
    conns = [f"c{100 + c // 4}.{c}" for c in range(16)]
    t = 1_000_000_000
    written = 0
    with path.open("w") as out:

        def put(event: dict) -> None:
            nonlocal written
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
            written += 1

        put(
            {
                "k": "meta",
                "t": t,
                "pid": 1,
                "source": "run synthetic",
                "db": "x.db",
                "journal_mode": "wal",
                "page_size": 4096,
                "wal_autocheckpoint": 1000,
                "python": "3",
                "sqlite": "3",
                "platform": "linux",
            }
        )
        for i, conn in enumerate(conns):
            worker = f"w#{i}"
            put(
                {
                    "k": "worker",
                    "t": t,
                    "worker": worker,
                    "group": "w",
                    "kind": "process",
                    "pid": 100 + i // 4,
                    "thread": 1000 + i,
                    "task": None,
                }
            )
            put(
                {
                    "k": "open",
                    "t": t,
                    "conn": conn,
                    "worker": worker,
                    "group": "w",
                    "pid": 100 + i // 4,
                    "timeout_ms": 500,
                    "isolation": None,
                    "journal_mode": "wal",
                    "instrumented": True,
                    "reduced_reason": None,
                }
            )
        txn = 0
        while written < n_events:
            conn = conns[txn % len(conns)]
            worker = f"w#{txn % len(conns)}"
            contended = (txn // 5000) % 2 == 1 and txn % 7 == 0
            busy = 3 if contended else 0
            err = 5 if contended and txn % 49 == 0 else None
            base = {
                "conn": conn,
                "worker": worker,
                "thread": 1000 + txn % 16,
                "task": None,
                "in_txn": True,
                "site": None,
                "msg": None,
                "ext": None,
            }
            begin_t1 = t + 20_000 + busy * 100_000 + (600_000_000 if err else 0)
            for n in range(busy):
                put({"k": "busy", "t": t + n * 100_000, "conn": conn, "n": n, "delay_ms": 1})
            put(
                {
                    **base,
                    "k": "call",
                    "t0": t,
                    "t1": begin_t1,
                    "op": "begin",
                    "sql": "BEGIN IMMEDIATE",
                    "stmts": ["BEGIN IMMEDIATE"],
                    "busy": busy,
                    "err": err,
                    "ext": err,
                    "in_txn": err is None,
                    "msg": "database is locked" if err else None,
                }
            )
            t = begin_t1 + 5_000
            if err is None:
                for sql in ("INSERT INTO t (v) VALUES (1)", "UPDATE t SET v = v + 1 WHERE id = 1"):
                    put(
                        {
                            **base,
                            "k": "call",
                            "t0": t,
                            "t1": t + 15_000,
                            "op": "write",
                            "sql": sql,
                            "stmts": [sql],
                            "busy": 0,
                            "err": None,
                        }
                    )
                    t += 20_000
                put(
                    {
                        **base,
                        "k": "call",
                        "t0": t,
                        "t1": t + 30_000,
                        "op": "commit",
                        "sql": "COMMIT",
                        "stmts": ["COMMIT"],
                        "busy": 0,
                        "err": None,
                        "in_txn": False,
                    }
                )
                t += 35_000
            txn += 1
    return written


@contextmanager
def gc_time() -> Iterator[list[float]]:
    """CPU seconds the cyclic garbage collector runs meanwhile (in the list's one item)."""
    spent = [0.0]
    started = [0.0]

    def on_collect(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            spent[0] += time.process_time() - started[0]

    gc.callbacks.append(on_collect)
    try:
        yield spent
    finally:
        gc.callbacks.remove(on_collect)


def cpu(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def print_parts(log: Path) -> None:
    """Each part in its own pass, with the collector set as analyze sets it."""
    with fewer_collections():
        read, _ = cpu(lambda: deque(stream_event_log(log), maxlen=0))
        activity = ActivityCounter()
        built, timeline = cpu(lambda: build_timeline(stream_event_log(log), activity=activity))
        rest, _ = cpu(lambda: (summarize(timeline, activity), diagnose(timeline)))
    print(
        f"parts (CPU, separate passes): read {read:.2f} s, timeline and counts "
        f"{built - read:.2f} s, summary and findings {rest:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--parts", action="store_true", help="time the parts separately")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        written = write_log(log, args.events)
        size = os.path.getsize(log)
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        with gc_time() as collecting:
            spent, analysis = cpu(lambda: analyze(stream_event_log(log)))
        done = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"log: {written:,} events, {size / 1e6:.0f} MB ({size / written:.0f} bytes/event)")
        print(
            f"read and analyze (one streaming pass): {done - start:.2f} s "
            f"(CPU {spent:.2f} s, of which cyclic GC {collecting[0]:.2f} s)"
        )
        print(f"peak RSS {peak / 1024:.0f} MiB (before loading {base_rss / 1024:.0f} MiB)")
        print(
            f"findings: {analysis.pattern_ids}; waits {len(analysis.timeline.waits):,}, "
            f"write holds {len(analysis.timeline.write_holds):,}"
        )
        if args.parts:
            del analysis
            print_parts(log)


if __name__ == "__main__":
    main()
