"""The timeline renderers (report/timeline.py, report/terminal_timeline.py; the timeline the
diagnosis builds is tests/test_build_timeline.py's) on real runs of built-in scenarios: the
Chrome trace file (`--timeline`) obeys the trace event format's rules, and says who held, who
waited and where calls failed; the terminal report draws the worst wait's window."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from sqlite_lockprobe.cli import cli
from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.report import runreport
from sqlite_lockprobe.report.terminal_timeline import worst_window
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import load_scenario

TRACED = [
    "upgrade-deadlock",
    "fastapi-self-deadlock",
    "process-long-write",
    "rollback-readers",
    "checkpoint-starvation",
]
PHASES = set("XBEisfMC")


def trace_format_errors(document: Any) -> list[str]:
    """Every way `document` breaks the Chrome trace event format as Perfetto and
    chrome://tracing read it: required fields per phase, types, times, matched B/E, flow
    starts with their finish, complete events that nest on each track, named tracks."""
    errors: list[str] = []
    if not isinstance(document, dict) or not isinstance(document.get("traceEvents"), list):
        return ["not a JSON object with a traceEvents list"]

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_time(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0

    slices: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    open_b: dict[tuple[int, int], list[str]] = defaultdict(list)
    starts: dict[tuple[str, str, Any], dict[str, Any]] = {}
    finishes: dict[tuple[str, str, Any], dict[str, Any]] = {}
    named_threads: set[tuple[int, int]] = set()
    named_processes: set[int] = set()
    used_tracks: set[tuple[int, int]] = set()
    for n, e in enumerate(document["traceEvents"]):
        where = f"event {n} {e!r:.120}"
        ph = e.get("ph")
        if ph not in PHASES:
            errors.append(f"{where}: unknown ph")
            continue
        if not isinstance(e.get("name"), str):
            errors.append(f"{where}: name must be a string")
        if not is_int(e.get("pid")) or (ph != "C" and ph != "M" and not is_int(e.get("tid"))):
            errors.append(f"{where}: pid and tid must be integers")
            continue
        if ph != "M" and not is_time(e.get("ts")):
            errors.append(f"{where}: ts must be a number >= 0")
            continue
        track = (e["pid"], e.get("tid", 0))
        if ph == "M":
            if e["name"] in ("process_name", "thread_name"):
                if not isinstance(e.get("args", {}).get("name"), str):
                    errors.append(f"{where}: metadata without args.name")
                elif e["name"] == "process_name":
                    named_processes.add(e["pid"])
                else:
                    named_threads.add(track)
        elif ph == "X":
            if not is_time(e.get("dur")):
                errors.append(f"{where}: X needs dur >= 0")
                continue
            slices[track].append((e["ts"], e["ts"] + e["dur"]))
            used_tracks.add(track)
        elif ph == "B":
            open_b[track].append(e["name"])
            used_tracks.add(track)
        elif ph == "E":
            if not open_b[track]:
                errors.append(f"{where}: E without B")
            else:
                open_b[track].pop()
        elif ph == "i":
            if e.get("s", "t") not in ("g", "p", "t"):
                errors.append(f"{where}: instant scope must be g, p or t")
            used_tracks.add(track)
        elif ph == "C":
            args = e.get("args")
            if not isinstance(args, dict) or not all(is_time(v) for v in args.values()):
                errors.append(f"{where}: counter args must be numbers")
        elif ph in "sf":
            if "id" not in e or not isinstance(e.get("cat"), str):
                errors.append(f"{where}: flow events need id and cat")
                continue
            key = (e["cat"], e["name"], e["id"])
            table = starts if ph == "s" else finishes
            if key in table:
                errors.append(f"{where}: second flow {ph} with id {e['id']}")
            table[key] = e
            if ph == "f" and e.get("bp") != "e":
                errors.append(f"{where}: flow finish should bind to its enclosing slice (bp e)")
    for track, names in open_b.items():
        if names:
            errors.append(f"track {track}: B without E: {names}")
    for key in starts.keys() ^ finishes.keys():
        errors.append(f"flow {key}: a start without its finish, or the reverse")
    for key in starts.keys() & finishes.keys():
        s, f = starts[key], finishes[key]
        if f["ts"] < s["ts"]:
            errors.append(f"flow {key}: finishes before it starts")
        for end in (s, f):
            spans = slices.get((end["pid"], end["tid"]), [])
            if not any(a <= end["ts"] <= b for a, b in spans):
                errors.append(f"flow {key}: {end['ph']} at {end['ts']} is inside no slice")
    for track, spans in slices.items():
        stack: list[tuple[float, float]] = []
        for a, b in sorted(spans, key=lambda ab: (ab[0], -ab[1])):
            while stack and stack[-1][1] <= a:
                stack.pop()
            if stack and b > stack[-1][1]:
                errors.append(f"track {track}: slice {a}-{b} overlaps {stack[-1]} partly")
            stack.append((a, b))
    for track in used_tracks:
        if track not in named_threads:
            errors.append(f"track {track}: no thread_name")
        if track[0] not in named_processes:
            errors.append(f"pid {track[0]}: no process_name")
    return errors


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each TRACED scenario run once for real: (its Chrome trace, its JSON report)."""
    out = tmp_path_factory.mktemp("traces")
    runner = CliRunner()
    runs = {}
    for name in TRACED:
        trace, report = out / f"{name}.json", out / f"{name}.report.json"
        args = ["run", name, "-q", "--timeline", str(trace), "--json", str(report)]
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[name] = (json.loads(trace.read_text()), json.loads(report.read_text()))
    return runs


@pytest.mark.parametrize("name", TRACED)
def test_chrome_trace_obeys_the_format(traced, name: str) -> None:
    trace, _ = traced[name]
    assert trace_format_errors(trace) == []
    assert trace["traceEvents"], "an empty trace shows nothing"


def test_the_validator_catches_what_viewers_reject() -> None:
    named = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "p"}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "t"}},
    ]
    good = {"name": "a", "ph": "X", "ts": 0, "dur": 10, "pid": 1, "tid": 2}
    assert trace_format_errors({"traceEvents": [*named, good]}) == []
    broken = [
        {**good, "dur": -1},
        {**good, "tid": "2"},
        {**good, "ts": 5, "dur": 10},  # overlaps `good` partly
        {"name": "w", "cat": "c", "ph": "s", "id": 1, "ts": 1, "pid": 1, "tid": 2},
        {"name": "b", "ph": "B", "ts": 1, "pid": 1, "tid": 2},
        {**good, "tid": 3},  # a track without a name
    ]
    for event in broken:
        assert trace_format_errors({"traceEvents": [*named, good, event]}), event


def events_of(trace: dict[str, Any], ph: str, cat: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in trace["traceEvents"] if e["ph"] == ph and (cat is None or e.get("cat") == cat)
    ]


def thread_names(trace: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events_of(trace, "M")
        if e["name"] == "thread_name"
    }


@pytest.mark.parametrize("name", TRACED)
def test_every_busy_error_is_an_instant_event_on_the_waiters_track(traced, name) -> None:
    trace, report = traced[name]
    instants = events_of(trace, "i", "busy")
    assert len(instants) == report["summary"]["total"]["busy_errors"]
    failed_waits = {
        (e["pid"], e["tid"], e["ts"] + e["dur"])
        for e in events_of(trace, "X", "busy wait")
        if e["args"]["failed"]
    }
    assert {(e["pid"], e["tid"], e["ts"]) for e in instants} <= failed_waits
    assert len(events_of(trace, "X", "busy wait")) == report["summary"]["total"]["waits"]["count"]


def test_self_deadlock_trace_shows_the_arrow_to_a_holder_on_the_same_thread(traced) -> None:
    trace, _ = traced["fastapi-self-deadlock"]
    names = thread_names(trace)
    assert len(names) == 2
    (wait,) = events_of(trace, "X", "busy wait")
    (hold,) = [h for h in events_of(trace, "X", "write lock") if h["tid"] != wait["tid"]]
    assert wait["args"]["failed"] and "session_a" in names[(wait["pid"], wait["tid"])]
    assert "session_b" in names[(hold["pid"], hold["tid"])]
    thread = re.compile(r"\(thread (\d+)\)")
    waiter_thread = thread.search(names[(wait["pid"], wait["tid"])])
    holder_thread = thread.search(names[(hold["pid"], hold["tid"])])
    assert waiter_thread and holder_thread and waiter_thread[1] == holder_thread[1]
    (start,) = events_of(trace, "s")
    (finish,) = events_of(trace, "f")
    assert (start["tid"], start["ts"]) == (wait["tid"], wait["ts"])
    assert finish["tid"] == hold["tid"]
    assert hold["ts"] <= finish["ts"] <= hold["ts"] + hold["dur"]


def test_worker_processes_get_their_own_named_process_tracks(traced) -> None:
    trace, _ = traced["process-long-write"]
    pids = {e["pid"] for e in events_of(trace, "X")}
    process_names = {e["pid"] for e in events_of(trace, "M") if e["name"] == "process_name"}
    assert len(pids) > 1 and pids <= process_names


def test_wal_size_is_a_counter_in_wal_mode(traced) -> None:
    trace, _ = traced["checkpoint-starvation"]
    sizes = [e["args"]["bytes"] for e in events_of(trace, "C")]
    assert sizes and max(sizes) > 0
    assert not events_of(traced["rollback-readers"][0], "C")


def test_report_writes_the_same_timeline_from_a_saved_event_log(tmp_path) -> None:
    runner = CliRunner()
    events, trace = tmp_path / "events.jsonl", tmp_path / "trace.json"
    args = ["run", "fastapi-self-deadlock", "-q", "--events", str(events)]
    assert runner.invoke(cli, args).exit_code == 0
    result = runner.invoke(cli, ["report", str(events), "-q", "--timeline", str(trace)])
    assert result.exit_code == 0, result.output
    document = json.loads(Path(trace).read_text())
    assert trace_format_errors(document) == []
    assert len(events_of(document, "i", "busy")) == 1


# ------------------------------------------------------------- the terminal's worst window


def rendered_report(name: str) -> str:
    """The terminal report of a real run, as an 80-column terminal shows it."""
    result = run_scenario(load_scenario(name))
    with open(os.devnull, "w") as devnull:
        console = Console(width=80, record=True, color_system=None, file=devnull)
        runreport.render(console, runreport.run_header(result), analyze(result.events))
    return console.export_text()


def window_lines(text: str) -> list[str]:
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Worst wait:"))
    last = next(i for i, line in enumerate(lines) if "SQLITE_BUSY: database is locked" in line)
    return lines[first : last + 1]


def test_terminal_timeline_shows_holder_and_waiter_rows_within_80_columns() -> None:
    window = window_lines(rendered_report("fastapi-self-deadlock"))
    assert all(len(line) <= 80 for line in window), window
    rows = {
        line.split()[0]: line for line in window if line.split()[1:2] in (["waiter"], ["holder"])
    }
    assert set(rows) == {"session_a#0", "session_b#0"}
    assert " waiter " in rows["session_a#0"] and " holder " in rows["session_b#0"]
    waiter_bar, holder_bar = rows["session_a#0"][28:], rows["session_b#0"][28:]
    # The holder holds the write lock for the whole wait, which ends in the failure.
    assert "✗" in waiter_bar and "░" in waiter_bar and "█" not in waiter_bar
    assert "█" in holder_bar and "✗" not in holder_bar
    failed_at = waiter_bar.index("✗")
    assert holder_bar[waiter_bar.index("░") : failed_at].strip("█") == ""
    assert "█ write lock" in window[-1] and "░ waiting" in window[-1]


# One connection used by two threads in turn (a pool's connection, handed from request to
# request): the thread that waited and failed, then another that made the connection's last
# call. The worst wait is named after the thread that waited.
SHARED_CONNECTION = """
import sqlite3, sys, threading
holder = sqlite3.connect(sys.argv[1], isolation_level=None)
holder.execute("CREATE TABLE t (x)")
holder.execute("BEGIN IMMEDIATE")
holder.execute("INSERT INTO t VALUES (1)")
shared = sqlite3.connect(sys.argv[1], timeout=0.05, check_same_thread=False)


def waits():
    try:
        shared.execute("INSERT INTO t VALUES (2)")
    except sqlite3.OperationalError as exc:
        print("waiter:", exc)


def calls_last():
    shared.execute("SELECT count(*) FROM t").fetchone()


for name, target in (("waiter", waits), ("later", calls_last)):
    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    if name == "waiter":
        holder.execute("COMMIT")
"""


def test_the_worst_wait_is_named_after_the_worker_that_waited(tmp_path) -> None:
    from tests.test_trace import trace_python

    traced = trace_python(tmp_path, "shared.py", SHARED_CONNECTION, "app.db")
    assert "waiter: database is locked" in traced.proc.stdout
    lines = traced.proc.stdout.splitlines()
    (title,) = [line for line in lines if line.startswith("Worst wait:")]
    assert title.startswith("Worst wait: waiter (")
    rows = lines[lines.index(title) + 1 : lines.index(title) + 3]
    assert {row.split()[0] for row in rows} == {"waiter", "MainThread"}, rows


def test_terminal_timeline_marks_the_readers_a_commit_waited_for() -> None:
    window = window_lines(rendered_report("rollback-readers"))
    assert all(len(line) <= 80 for line in window), window
    holder = next(line for line in window if line.split()[1:2] == ["holder"])
    assert "▒" in holder[28:]  # a SHARED lock (read transaction) blocks the COMMIT
    assert any("✗" in line[28:] for line in window if line.split()[1:2] == ["waiter"])


def test_a_healthy_run_has_no_window_when_nothing_waited() -> None:
    assert worst_window(Timeline(connections={}, calls=(), waits=(), write_holds=())) is None
