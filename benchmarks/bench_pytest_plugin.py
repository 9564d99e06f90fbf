"""What `pytest --lockprobe` costs a suite (docs/pytest.md): the plugin not loaded, installed
but off, and on, on a suite of tests that each open a connection and run one query. Runs
are interleaved; prints the median of pytest's own "in N s" per variant.

    python benchmarks/bench_pytest_plugin.py [--tests 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "not loaded (-p no:lockprobe)": ["-p", "no:lockprobe"],
    "installed, off": [],
    "on (--lockprobe)": ["--lockprobe"],
}


def write_suite(directory: Path, tests: int) -> None:
    lines = ["import sqlite3", ""]
    for i in range(tests):
        lines += [
            f"def test_{i}():",
            '    conn = sqlite3.connect(":memory:")',
            '    conn.execute("SELECT 1").fetchall()',
            "    conn.close()",
            "",
        ]
    (directory / "test_many.py").write_text("\n".join(lines))
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    (directory / "pytest.ini").write_text(ini)


def seconds(directory: Path, extra: list[str]) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r" in ([\d.]+)s", result.stdout.splitlines()[-1])
    assert match, result.stdout[-500:]
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_suite(directory, args.tests)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.runs):
            for name, extra in VARIANTS.items():
                times[name].append(seconds(directory, extra))
    base = statistics.median(times["not loaded (-p no:lockprobe)"])
    for name, values in times.items():
        median = statistics.median(values)
        per_test_ms = (median - base) / args.tests * 1000
        print(f"{name:30} median {median:6.2f} s  ({per_test_ms:+.2f} ms a test)")


if __name__ == "__main__":
    main()
