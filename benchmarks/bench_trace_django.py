"""Trace overhead on a Django ORM loop: the same program run bare, under `lockprobe trace`, and
with the floor of any Python-level probe, and in process under the recorder (`record()`:
every call; `record(sample=0.1, dump_on_locked=...)` with Django's connection one of the 9 in
10 not sampled: busy handler only), interleaved; the program times its own loop, so
start-up and the report are not counted.

    python benchmarks/bench_trace_django.py [--transactions 3000] [--rounds 9]
        [--reconnect-every K] [--modes traced,floor,recorded,sampled]

With --reconnect-every K, every mode closes Django's connection each K transactions, as a web
app does at each request's end: `sampled` then records one connection in 10 as it would in
production (without it, its one connection is an unsampled one).

The loop: inside `transaction.atomic()`, `Item.objects.create(...)` then `Item.objects.get(pk=)`
(SQLite backend, WAL, settings made in the script): 4 calls per transaction (BEGIN, INSERT,
SELECT, COMMIT). The floor is what a probe must at least cost, measured in the same run: the
cursor class Django uses, subclassed so that execute calls the parent and appends one
(t0, t1, sql, thread) tuple. Prints medians of per-round ratios against bare.
Needs Django (`pip install django`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROGRAM = """
import sys, threading, time
import django
from django.conf import settings

db, mode, n, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
wal = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db,
                           "OPTIONS": {"init_command": wal}}},
    INSTALLED_APPS=[], USE_TZ=False,
)
if mode == "floor":
    from django.db.backends.sqlite3 import base
    record, monotonic_ns, get_ident = [], time.monotonic_ns, threading.get_ident

    class Floor(base.SQLiteCursorWrapper):
        def execute(self, query, params=None):
            t0 = monotonic_ns()
            result = super().execute(query, params)
            record.append((t0, monotonic_ns(), query, get_ident()))
            return result

    base.SQLiteCursorWrapper = Floor
if mode in ("recorded", "sampled"):
    import os, sqlite3, sqlite_lockprobe
    options = {}
    if mode == "sampled":  # the production set-up: dumps on, one connection in 10 recorded
        options = {"sample": 0.1, "dump_on_locked": os.path.dirname(db)}
    rec = sqlite_lockprobe.install(**options)
    if mode == "sampled" and not every:
        sqlite3.connect(db).close()  # connection 0 is the sampled one: Django's is not
django.setup()
from django.db import connection, models, transaction


class Item(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "bench"


with connection.schema_editor() as editor:
    editor.create_model(Item)
start = time.perf_counter()
for i in range(n):
    if every and i and i % every == 0:  # a request ends: Django closes its connection
        connection.close()
    with transaction.atomic():
        item = Item.objects.create(name=f"item {i}")
        Item.objects.get(pk=item.pk)
print(time.perf_counter() - start)
"""

MODES = ("bare", "traced", "floor", "recorded", "sampled")


def run(program: Path, workdir: Path, mode: str, n: int, every: int = 0) -> float:
    """Seconds the program's loop took."""
    db = workdir / f"{mode}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    command = [sys.executable, str(program), str(db), mode, str(n), str(every)]
    if mode == "traced":
        command = [sys.executable, "-m", "sqlite_lockprobe", "trace", "-q", "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--reconnect-every",
        type=int,
        default=0,
        metavar="K",
        help="close Django's connection every K transactions, in every mode (a web app's "
        "requests: connections come and go, and sample=0.1 records one in 10 of them)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES[1:]), help="modes run against bare, comma-separated"
    )
    args = parser.parse_args()
    modes = ("bare", *(m for m in args.modes.split(",") if m != "bare"))
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    every = args.reconnect_every
    with tempfile.TemporaryDirectory(prefix="bench-django-") as tmp:
        workdir = Path(tmp)
        program = workdir / "program.py"
        program.write_text(PROGRAM)
        for mode in modes:
            run(program, workdir, mode, 200, every)  # warm up
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                times[mode].append(run(program, workdir, mode, args.transactions, every))
        calls = 4 * args.transactions
        bare = statistics.median(times["bare"])
        print(f"Django ORM loop: {args.transactions:,} transactions (4 calls each) per run, "
              f"{args.rounds} rounds interleaved"
              + (f", a new connection every {every}" if every else ""))  # fmt: skip
        print(f"  bare: median {args.transactions / bare:,.0f} transactions/s "
              f"({bare * 1e6 / calls:.1f} us per call)")  # fmt: skip
        for mode in modes[1:]:
            ratios = [b / t for b, t in zip(times["bare"], times[mode], strict=True)]
            cost = (statistics.median(times[mode]) - bare) * 1e6 / calls
            print(
                f"  {mode:8}: ratio {mode}/bare throughput median {statistics.median(ratios):.3f} "
                f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}); "
                f"cost {cost:.2f} us per call"
            )


if __name__ == "__main__":
    main()
