"""Trace released test suites: do their results stay the same under `lockprobe trace`, what does
tracing cost them, and does lockprobe find anything in these healthy programs (it should not)?

    python benchmarks/bench_real_suites.py [--suite NAME] [--rounds 1] [--keep DIR] [-k EXPR]

Each suite gets a virtualenv with its pinned release (installed from its sdist, which also
carries its tests) and pytest. Its tests run bare and under `lockprobe trace --json REPORT
--events LOG -- python -m pytest ...`, interleaved (bare, traced, bare, traced ... for --rounds).
lockprobe is the checkout this file lives in, run by this interpreter; the suite runs on the
virtualenv's. Exits 1 when a traced run's test results differ from the bare run's of its round,
or when a traced run gave no report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]

PYTEST = "pytest==9.2.0"


@dataclass(frozen=True)
class Suite:
    """A released package whose own tests are run: where the tests come from and how to run
    them."""

    name: str
    release: str  # the sdist installed into the venv and unpacked for its tests
    requirements: tuple[str, ...]  # what the tests need besides the release
    copy: tuple[str, ...]  # paths of the sdist copied into the work tree (tests, docs)
    pytest_args: tuple[str, ...]


SUITES = {
    suite.name: suite
    for suite in (
        # The sdist has tests/ and docs/ (tests/test_docs.py reads ../docs/*.rst).
        Suite(
            "sqlite-utils",
            "sqlite-utils==4.2.1",
            (PYTEST, "hypothesis==6.170.27"),
            ("tests", "docs"),
            ("tests",),
        ),
        # The tests are a subpackage, aiosqlite/tests, in the sdist and the installed package:
        # unittest cases that its own CI runs with `python -m aiosqlite.tests` (smoke.py only;
        # perf.py runs each case for a fixed time, so it has no ratio to give).
        Suite(
            "aiosqlite",
            "aiosqlite==0.22.1",
            (PYTEST,),
            (),
            ("--pyargs", "aiosqlite.tests.smoke"),
        ),
    )
}

# Runs lockprobe's CLI in this process and writes the process's own peak RSS (RUSAGE_SELF,
# which excludes the traced program: RUSAGE_CHILDREN and wait4 fold the children in).
LOCKPROBE_WRAPPER = """
import resource, runpy, sys
rss_file = sys.argv.pop(1)
sys.path.insert(0, sys.argv.pop(1))
sys.argv[0] = "lockprobe"
try:
    runpy.run_module("sqlite_lockprobe", run_name="__main__", alter_sys=True)
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    program = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(rss_file, "w") as f:
        f.write("%d %d" % (own, program))
"""


@dataclass
class RunResult:
    """One run of a suite, bare or traced."""

    traced: bool
    exit_code: int
    wall_seconds: float
    pytest_seconds: float  # pytest's own time for the tests (junit testsuite time)
    outcomes: dict[str, str]  # test id -> passed | failed | error | skipped
    last_line: str
    program_rss_kib: int  # the largest process of the test run
    lockprobe_rss_kib: int = 0
    events_bytes: int = 0
    report: dict | None = None
    counts: Counter[str] = field(default_factory=Counter)


def run(command: list[str], **kwargs: object) -> None:
    """Run a set-up step, showing its output only when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout}{done.stderr}")


def prepare(suite: Suite, home: Path) -> tuple[Path, Path]:
    """The suite's venv and work tree under home, made once (reused with --keep)."""
    venv, tree, ready = home / "venv", home / "tree", home / "ready.json"
    wanted = {"release": suite.release, "requirements": list(suite.requirements)}
    if ready.exists() and json.loads(ready.read_text()) == wanted:
        return venv / "bin" / "python", tree
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    print(f"[{suite.name}] creating the venv and installing {suite.release}", flush=True)
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    sdists = home / "sdist"
    run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "-d", str(sdists), suite.release])  # fmt: skip
    (sdist,) = sdists.iterdir()
    run([str(python), "-m", "pip", "install", "-q", str(sdist), *suite.requirements])
    tree.mkdir()
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        unpacked = home / "unpacked"
        tar.extractall(unpacked, filter="data")
    for part in suite.copy:
        shutil.copytree(unpacked / top / part, tree / part)
    shutil.rmtree(unpacked)
    # Compile once, so the first round does not pay for it.
    run([str(python), "-m", "compileall", "-q", str(tree)])
    ready.write_text(json.dumps(wanted))
    return python, tree


def versions(python: Path) -> str:
    """Every distribution in the venv, and the interpreter's Python and SQLite."""
    freeze = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    runtime = subprocess.run(
        [str(python), "-c", "import sqlite3, sys; print(sys.version.split()[0], "
         "sqlite3.sqlite_version)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return f"Python {runtime[0]}, SQLite {runtime[1]}; " + ", ".join(freeze)


def read_junit(path: Path) -> tuple[dict[str, str], float]:
    """Each test's outcome, and pytest's own time, from its JUnit XML."""
    if not path.exists():
        return {}, 0.0
    root = ET.parse(path).getroot()
    outcomes: dict[str, str] = {}
    seconds = 0.0
    for suite in root.iter("testsuite"):
        seconds += float(suite.get("time", 0))
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = "passed"
        for kind, name in (("skipped", "skipped"), ("failure", "failed"), ("error", "error")):
            if kind in kinds:
                outcome = name
        key = f"{case.get('classname')}::{case.get('name')}"
        # A test that fails and then errors in teardown appears twice: keep the worse.
        outcomes[key] = outcome if key not in outcomes or outcome != "passed" else outcomes[key]
    return outcomes, seconds


SUMMARY_LINE = re.compile(r"\b\d+ (passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s\b")


def last_line(log: Path) -> str:
    """pytest's summary line (`12 passed, 1 skipped in 3.45s`), the last one in the log."""
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if SUMMARY_LINE.search(line):
            return line.strip("= ")
    return "no pytest summary line"


def run_suite_once(
    python: Path, tree: Path, suite: Suite, out: Path, traced: bool, k: str | None, timeout: float
) -> RunResult:
    """Run the suite once in its own process group, bare or under lockprobe trace."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    junit, log = out / "junit.xml", out / "output.log"
    pytest = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
              f"--junitxml={junit}", f"--basetemp={out / 'tmp'}", *suite.pytest_args]  # fmt: skip
    if k:
        pytest += ["-k", k]
    command = pytest
    report, events, rss = out / "report.json", out / "events.jsonl", out / "rss"
    if traced:
        command = [sys.executable, "-c", LOCKPROBE_WRAPPER, str(rss), str(CHECKOUT), "trace",
                   "--json", str(report), "--events", str(events), "--", *pytest]  # fmt: skip
    with log.open("w") as output:
        t0 = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=tree, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        # wait4, not Popen.wait: its rusage is the run's (the process and the children it
        # waited for; ru_maxrss the largest of them).
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            os.killpg(process.pid, signal.SIGKILL)

        killer = threading.Timer(timeout, kill)
        killer.start()
        _, status, usage = os.wait4(process.pid, 0)
        killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        if timed_out.is_set():
            print(f"  timed out after {timeout:.0f} s: killed", flush=True)
        wall = time.perf_counter() - t0
    outcomes, pytest_seconds = read_junit(junit)
    shutil.rmtree(out / "tmp", ignore_errors=True)
    result = RunResult(traced, process.returncode, wall, pytest_seconds, outcomes,
                       last_line(log), 0)  # fmt: skip
    result.counts = Counter(outcomes.values())
    if traced:
        if rss.exists():
            own, program = rss.read_text().split()
            result.lockprobe_rss_kib, result.program_rss_kib = int(own), int(program)
        result.events_bytes = events.stat().st_size if events.exists() else 0
        result.report = json.loads(report.read_text()) if report.exists() else None
    else:
        result.program_rss_kib = usage.ru_maxrss
    return result


def counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped"))


def differences(bare: dict[str, str], traced: dict[str, str]) -> list[str]:
    """Tests whose outcome differs between two runs (missing in one counts)."""
    return [
        f"{test}: bare {bare.get(test, 'absent')}, traced {traced.get(test, 'absent')}"
        for test in sorted(set(bare) | set(traced))
        if bare.get(test) != traced.get(test)
    ]


def print_findings(report: dict | None, shown: set[str]) -> None:
    """Each finding with its evidence, once: one seen in an earlier round (the same evidence but
    for pids, connection numbers and times) is skipped."""
    if report is None:
        print("    no report (lockprobe failed: see output.log)")
        return
    for finding in report["findings"]:
        lines = finding["evidence"].get("lines", [])
        key = re.sub(r"\d+", "N", json.dumps([finding["pattern"], lines]))
        if key in shown:
            continue
        shown.add(key)
        print(
            f"    finding {finding['pattern']} ({finding['severity']}, "
            f"{finding['confidence']}): {finding['title']}"
        )
        for line in lines:
            print(f"      - {line}")


def bench_suite(suite: Suite, home: Path, args: argparse.Namespace) -> bool:
    """Run one suite's rounds and print its figures; False when results differed."""
    python, tree = prepare(suite, home)
    print(f"[{suite.name}] {versions(python)}", flush=True)
    rounds: list[tuple[RunResult, RunResult]] = []
    ok = True
    for n in range(args.rounds):
        pair = []
        for traced in (False, True):
            out = home / "runs" / f"{n + 1}-{'traced' if traced else 'bare'}"
            result = run_suite_once(python, tree, suite, out, traced, args.k, args.timeout)
            mode = "traced" if traced else "bare"
            print(
                f"  round {n + 1} {mode:6}: exit {result.exit_code}, {result.wall_seconds:.1f} s "
                f"(pytest {result.pytest_seconds:.1f} s), {counts_text(result.counts)}, "
                f"largest process {result.program_rss_kib / 1024:.0f} MiB"
                + (f", lockprobe {result.lockprobe_rss_kib / 1024:.0f} MiB" if traced else "")
                + f"  [{result.last_line}]",
                flush=True,
            )
            pair.append(result)
        bare, traced_run = pair
        diff = differences(bare.outcomes, traced_run.outcomes)
        if not bare.outcomes:
            diff.append("the bare run recorded no test (no JUnit XML)")
        if traced_run.report is None:
            ok = False
            print("  traced run gave no JSON report", flush=True)
        if diff:
            ok = False
            print(f"  results differ in round {n + 1}:")
            for line in diff:
                print(f"    {line}")
        rounds.append((bare, traced_run))
    summarize(suite, rounds)
    return ok


def median_of(runs: list[RunResult], value: Callable[[RunResult], float]) -> float:
    return statistics.median(value(run) for run in runs)


def summarize(suite: Suite, rounds: list[tuple[RunResult, RunResult]]) -> None:
    bare = [b for b, _ in rounds]
    traced = [t for _, t in rounds]
    wall = statistics.median(t.wall_seconds / b.wall_seconds for b, t in rounds)
    own = [t.pytest_seconds / b.pytest_seconds for b, t in rounds if b.pytest_seconds] or [0.0]
    last = traced[-1]
    report = last.report or {}
    trace = report.get("trace", {})
    total = report.get("summary", {}).get("total", {})
    patterns = Counter(f["pattern"] for t in traced for f in (t.report or {}).get("findings", []))
    identical = all(not differences(b.outcomes, t.outcomes) for b, t in rounds)
    print(f"[{suite.name}] summary over {len(rounds)} round(s)")
    print(f"  tests bare:   {counts_text(bare[-1].counts)}")
    print(f"  tests traced: {counts_text(last.counts)}")
    print(f"  results identical: {'yes' if identical else 'NO'}")
    print(
        f"  wall time: bare median {median_of(bare, lambda r: r.wall_seconds):.1f} s, "
        f"traced {median_of(traced, lambda r: r.wall_seconds):.1f} s, "
        f"ratio traced/bare median {wall:.2f} (pytest's own time: {statistics.median(own):.2f})"
    )
    # Outside pytest's session: interpreter start-up, and for traced runs lockprobe's reading
    # of the event files, analysis, report and --events log after the program ended.
    print(
        "  outside pytest's session: bare median "
        f"{median_of(bare, lambda r: r.wall_seconds - r.pytest_seconds):.1f} s, traced "
        f"{median_of(traced, lambda r: r.wall_seconds - r.pytest_seconds):.1f} s"
    )
    print(
        f"  recorded: {len(trace.get('pids', []))} process(es), "
        f"{trace.get('connections', '?')} connection(s), {total.get('calls', '?')} call(s); "
        f"event log {max(t.events_bytes for t in traced) / 2**20:.1f} MiB"
    )
    print(
        f"  peak RSS: lockprobe max {max(t.lockprobe_rss_kib for t in traced) / 1024:.0f} MiB; "
        "the suite's largest process, median: "
        f"bare {median_of(bare, lambda r: r.program_rss_kib) / 1024:.0f} MiB, "
        f"traced {median_of(traced, lambda r: r.program_rss_kib) / 1024:.0f} MiB"
    )
    found = ", ".join(f"{p} x{n}" for p, n in patterns.most_common()) or "none"
    print(f"  findings (all traced rounds): {found}")
    shown: set[str] = set()
    for t in traced:
        print_findings(t.report, shown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite", action="append", choices=sorted(SUITES), help="repeatable; default: all"
    )
    parser.add_argument("--rounds", type=int, default=1, help="bare+traced pairs per suite")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep venvs and runs in DIR")
    parser.add_argument("-k", metavar="EXPR", help="passed to pytest: run a subset")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds per run before it is killed"
    )
    args = parser.parse_args()
    names = args.suite or list(SUITES)
    print(f"lockprobe from {CHECKOUT} ({git_head()}), run by Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="bench-suites-") as tmp:
        base = args.keep.resolve() if args.keep else Path(tmp)
        ok = True
        for name in names:
            ok = bench_suite(SUITES[name], base / name, args) and ok
    if not ok:
        print("FAILED: a traced run's results differ from the bare run's, or it gave no report")
    return 0 if ok else 1


def git_head() -> str:
    done = subprocess.run(
        ["git", "-C", str(CHECKOUT), "log", "-1", "--format=%h %cs"], capture_output=True, text=True
    )
    return done.stdout.strip() or "not a git checkout"


if __name__ == "__main__":
    sys.exit(main())
