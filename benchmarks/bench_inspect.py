"""Does `inspect` cost the same on a multi-GB database as on a small one? (It reads headers only.)

Builds three databases in a temporary directory: small (~1 MiB), real (a few hundred MiB of
pages SQLite wrote) and huge (a real database extended to 2 GiB by a sparse tail, with the
header's page count and version-valid-for number updated to match, so SQLite's own rule reports
the full size). Then times inspect_database() on each, interleaved, and prints medians and the
ratios to the small one.

    python benchmarks/bench_inspect.py [--repeats 30] [--real-mib 300] [--huge-gib 2]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from sqlite_lockprobe.sources.inspect.inspection import inspect_database


def build(path: Path, mib: int) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB)")
    conn.executemany(
        "INSERT INTO blobs(body) VALUES (zeroblob(?))", [(1024 * 1024,) for _ in range(mib)]
    )
    conn.commit()
    conn.close()
    return path


def extend_sparse(path: Path, size: int) -> Path:
    """Grow the file to `size` with a hole and make the header agree (fileformat2.html 1.3.7)."""
    with open(path, "r+b") as handle:
        header = bytearray(handle.read(100))
        page_size = int.from_bytes(header[16:18], "big") or 65536
        pages = size // page_size
        header[28:32] = pages.to_bytes(4, "big")
        header[92:96] = header[24:28]  # version-valid-for = change counter: the count is valid
        handle.seek(0)
        handle.write(header)
        handle.truncate(pages * page_size)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--real-mib", type=int, default=300)
    parser.add_argument("--huge-gib", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as tmp:
        started = time.perf_counter()
        dbs = {
            "small": build(Path(tmp, "small.db"), 1),
            "real": build(Path(tmp, "real.db"), args.real_mib),
            "huge": extend_sparse(build(Path(tmp, "huge.db"), 1), int(args.huge_gib * 2**30)),
        }
        print(f"built in {time.perf_counter() - started:.1f} s")
        for name, path in dbs.items():
            ins = inspect_database(path)
            assert ins.database.header is not None
            print(
                f"{name:>5}: {os.path.getsize(path) / 2**20:10.1f} MiB on disk "
                f"{os.stat(path).st_blocks * 512 / 2**20:8.1f} MiB allocated, "
                f"{ins.database.page_count} pages by the header"
            )
        times: dict[str, list[float]] = {name: [] for name in dbs}
        for _ in range(args.repeats):
            for name, path in dbs.items():  # interleaved: drift hits every size alike
                t0 = time.perf_counter()
                inspect_database(path)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["small"])
        for name, samples in times.items():
            median = statistics.median(samples)
            print(
                f"{name:>5}: median {median * 1000:7.2f} ms  "
                f"(min {min(samples) * 1000:.2f}, max {max(samples) * 1000:.2f})  "
                f"ratio to small {median / base:.2f}"
            )


if __name__ == "__main__":
    main()
