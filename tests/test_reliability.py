"""Reliability and safety: worker deaths, signals, bad paths and bad files, never a traceback
and never a change to the user's data."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import parse_scenario

CRASH = """
[database]
journal_mode = "{mode}"
busy_timeout_ms = 5000
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)"]

[[group]]
name = "doomed"
kind = "process"
steps = [{{ begin = "immediate" }}, {{ write = "INSERT INTO t (who) VALUES ('doomed')" }},
         {{ signal = "holding" }}, {{ crash = true }}]

[[group]]
name = "survivor"
kind = "process"
count = 2
repeat = 5
steps = [{{ wait = "holding" }}, {{ begin = "immediate" }},
         {{ write = "INSERT INTO t (who) VALUES ('survivor')" }}, "commit"]
"""


@pytest.mark.probe
@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_worker_killed_mid_transaction_keeps_every_reported_commit_and_nothing_else(
    tmp_path: Path, mode: str
) -> None:
    db = tmp_path / "crash.db"
    result = run_scenario(parse_scenario(CRASH.format(mode=mode)), db=db)
    analysis = analyze(result.events)
    # The run went on, and says which worker died and how.
    (crash,) = analysis.summary.total.crashes
    assert crash.startswith("doomed#0: killed by SIGKILL (pid ")
    assert [h.released_by for h in analysis.timeline.write_holds if h.holder.group == "doomed"] == [
        "process killed"
    ]
    # Accounting: every commit reported is in the database, the dead transaction is not.
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT who, count(*) FROM t GROUP BY who").fetchall()
    assert rows == [("survivor", analysis.summary.total.commits)] == [("survivor", 10)]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


LONG = """
[database]
journal_mode = "wal"
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (id INTEGER PRIMARY KEY)"]

[[group]]
name = "writer"
duration = 600
steps = [{ write = "INSERT INTO t DEFAULT VALUES" }, { sleep = 0.05 }]
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_reports_what_it_recorded_and_cleans_up(
    tmp_path: Path, signum: int, code: int
) -> None:
    scenario = tmp_path / "long.toml"
    scenario.write_text(LONG)
    db, report, tmpdir = tmp_path / "out.db", tmp_path / "report.json", tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    cmd = [sys.executable, "-m", "sqlite_lockprobe", "run", str(scenario), "--db", str(db)]
    proc = subprocess.Popen(
        [*cmd, "--json", str(report), "-q"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_rows(db, proc)  # the workload is running: rows are being committed
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    document = json.loads(report.read_text())
    assert document["run"]["interrupted"] is True
    assert document["summary"]["total"]["commits"] >= 1
    assert list(tmpdir.iterdir()) == []  # the run's temporary files are gone


def _wait_for_rows(db: Path, proc: subprocess.Popen[str]) -> None:
    """Poll (read-only) until the run has committed a row; fail if the run ended first."""
    while proc.poll() is None:
        if db.exists():
            try:
                conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
                try:
                    if conn.execute("SELECT count(*) FROM t").fetchone()[0] > 0:
                        return
                finally:
                    conn.close()
            except sqlite3.OperationalError:
                pass  # the table is not created yet
        time.sleep(0.01)
    raise AssertionError(f"the run ended before committing: {proc.returncode}")


MINIMAL = """
[database]
schema = ["CREATE TABLE t (x)"]
[[group]]
name = "w"
steps = [{ write = "INSERT INTO t VALUES (1)" }]
"""


def _bad_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.db"
    loop.symlink_to(loop)
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, just text long enough to be a header" * 3)
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(b"SQLite format 3\x00" + b"\x10\x00")
    orphan = tmp_path / "gone.db"
    Path(f"{orphan}-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 28)
    return {
        "fifo": (fifo, "not a regular file"),
        "directory": (tmp_path, "is a directory"),
        "symlink loop": (loop, "cannot open database"),
        "not sqlite": (text, "file is not a database"),
        "truncated": (truncated, "cannot copy database"),
        "wal without its database": (orphan, "gone.db-wal is: it belongs to a database"),
        "missing directory": (tmp_path / "no" / "such.db", "does not exist"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "fifo",
        "directory",
        "symlink loop",
        "not sqlite",
        "truncated",
        "wal without its database",
        "missing directory",
    ],
)
def test_bad_database_paths_are_one_line_errors_and_untouched(
    tmp_path: Path, case: str, invoke
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(MINIMAL)
    path, message = _bad_paths(tmp_path)[case]
    before = {p.name: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in tmp_path.iterdir()}
    proc = subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "run", str(scenario), "--db", str(path), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    after = {p.name: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in tmp_path.iterdir()}
    assert after == before


def test_a_zero_length_file_is_copied_not_written(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = run_scenario(parse_scenario(MINIMAL), db=empty)
    assert "a copy of" in result.db_note and empty.stat().st_size == 0


def test_an_unwritable_event_log_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sqlite_lockprobe",
            "run",
            "healthy",
            "-q",
            "--events",
            "/proc/no/x.jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "lockprobe: Invalid value for '--events': /proc/no: no such directory"
        " (see 'lockprobe run --help')\n"
    )


# Random TOML documents: every one either loads or is rejected with one line naming a key.
_scalars = st.one_of(
    st.booleans(), st.integers(-(10**6), 10**9), st.floats(allow_nan=True), st.text(max_size=12)
)
_keys = st.sampled_from(
    [
        "name",
        "kind",
        "count",
        "steps",
        "repeat",
        "duration",
        "database",
        "group",
        "journal_mode",
        "busy_timeout_ms",
        "write",
        "read",
        "sleep",
        "wait",
        "signal",
        "begin",
        "commit",
        "schema",
        "connection",
        "blocking",
        "on_error",
        "expect",
        "max_seconds",
        "stagger",
        "x",
    ]
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=20,
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(
            value, "nan" if value != value else repr(value)
        )
    if isinstance(value, (int,)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_random_scenario_files_load_or_fail_with_one_line(document: dict) -> None:
    text = "\n".join(f"{k} = {_toml(v)}" for k, v in document.items())
    try:
        parse_scenario(text, source="fuzz.toml")
    except LockprobeError as error:
        message = str(error)
        assert message.startswith("fuzz.toml: ") and "\n" not in message
