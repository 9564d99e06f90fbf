"""A new user's first minutes: running a built-in scenario twice on the database it made, a
saved log cut mid-line, and a typo in a scenario file. Real files, the real CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from sqlite_lockprobe.cli import cli
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.records import SkippedLines, read_events
from sqlite_lockprobe.sources.run.scenario import parse_scenario


def lockprobe(*args: str) -> tuple[int, str, str]:
    """The CLI in-process: exit code, stdout, stderr (an 80-column console)."""
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "80"})
    return result.exit_code, result.stdout, result.stderr


def flat(text: str) -> str:
    """The report's words, whatever the console's width."""
    return " ".join(text.split())


# ------------------------------------------------ a built-in scenario twice on its own file


def test_a_scenario_runs_again_on_the_database_it_created(tmp_path: Path) -> None:
    # The second run failed: `database.schema[0]: table a already exists`.
    db = tmp_path / "x.db"
    first = tmp_path / "first.json"
    code, _, err = lockprobe("run", "upgrade-deadlock", "--db", str(db), "-q", "--json", str(first))
    assert code == 0, err
    assert json.loads(first.read_text())["database"]["schema_kept"] == []
    assert json.loads(first.read_text())["database"]["setup_run"] is True
    made = db.read_bytes()

    second = tmp_path / "second.json"
    code, out, err = lockprobe("run", "upgrade-deadlock", "--db", str(db), "--json", str(second))
    assert code == 0, err
    database = json.loads(second.read_text())["database"]
    assert database["note"] == f"a copy of {db} (the original was not modified)"
    assert database["schema_kept"] == ["table a"] and database["setup_run"] is False
    assert (
        "table a already there: kept as it was, with its rows; setup (1 statement) not run again"
        in flat(out)
    )
    assert json.loads(second.read_text())["summary"]["total"]["calls"] > 0
    assert db.read_bytes() == made  # the run worked on a copy


def test_an_existing_table_of_another_shape_is_named_not_patched(tmp_path: Path) -> None:
    # The application's own database has a table `a` without the column the scenario writes:
    # kept as it is, and the step that cannot run is named before any worker starts.
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    code, _, err = lockprobe("run", "upgrade-deadlock", "--db", str(db), "-q")
    assert code == 2
    assert "group[0].steps[4].write: table a has no column named v" in err, err


def test_a_schema_that_creates_a_table_twice_is_still_an_error(tmp_path: Path) -> None:
    # Only objects the database had before preparing are kept; the scenario's own mistake is
    # reported as before.
    scenario = tmp_path / "twice.toml"
    scenario.write_text(
        "[database]\n"
        'schema = ["CREATE TABLE t (x)", "CREATE TABLE t (y)"]\n'
        "[[group]]\n"
        'name = "w"\n'
        'steps = [{ write = "INSERT INTO t (x) VALUES (1)" }]\n'
    )
    code, _, err = lockprobe("run", str(scenario), "-q")
    assert code == 2 and "database.schema[1]: table t already exists" in err, err


# ------------------------------------------------------------ a log cut mid-line


@pytest.fixture(scope="module")
def saved_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("log") / "events.jsonl"
    code, _, err = lockprobe("run", "fastapi-self-deadlock", "-q", "--events", str(log))
    assert code == 0, err
    return log


def test_a_torn_last_line_is_a_note_with_the_count(saved_log: Path, tmp_path: Path) -> None:
    # It was dropped without a word.
    text = saved_log.read_text()
    torn = tmp_path / "torn.jsonl"
    torn.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 20])  # 19 chars of the last
    out_json = tmp_path / "report.json"
    code, out, err = lockprobe("report", str(torn), "--json", str(out_json))
    assert code == 0, err
    assert err == ""  # a note, not an error
    assert (
        "note 1 line dropped: the last line was cut mid-line (normal when the recording "
        "process was killed)" in flat(out)
    )
    report = json.loads(out_json.read_text())
    assert report["skipped_lines"] == {"torn": 1, "not_json": 0, "not_events": 0}
    intact = len(text.splitlines())
    assert report["summary"]["total"]["calls"] >= 1
    assert intact - 1 == sum(1 for _ in read_events(torn))


def test_lines_that_are_not_events_are_counted_by_what_they_are(
    saved_log: Path, tmp_path: Path
) -> None:
    lines = saved_log.read_text().splitlines(keepends=True)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join([lines[0], "garbage\n", "\n", '{"k": "nope"}\n', *lines[1:]]))
    out_json = tmp_path / "report.json"
    code, out, err = lockprobe("report", str(mixed), "--json", str(out_json))
    assert code == 0, err
    assert "note 2 lines dropped: 1 not JSON; 1 not a lockprobe event" in flat(out)
    report = json.loads(out_json.read_text())
    assert report["skipped_lines"] == {"torn": 0, "not_json": 1, "not_events": 1}


def test_an_intact_log_has_no_note(saved_log: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "report.json"
    code, out, _ = lockprobe("report", str(saved_log), "--json", str(out_json))
    assert code == 0 and "dropped" not in out
    assert json.loads(out_json.read_text())["skipped_lines"] == {
        "torn": 0,
        "not_json": 0,
        "not_events": 0,
    }


def test_both_decoders_count_the_same_lines(tmp_path: Path) -> None:
    from sqlite_lockprobe.events.records import events_with_json, events_with_orjson

    text = (
        '{"k":"close","t":1,"conn":"c1"}\n'
        "garbage\n"
        "   \n"
        '{"k":"nope"}\n'
        "[1, 2]\n"
        '{"k":"close","t":2,"conn":"c1"}\n'
        '{"k":"close","t":3,'
    )
    counts = []
    for decode in (events_with_json, events_with_orjson):
        skipped = SkippedLines()
        events = list(decode(text.splitlines(keepends=True), skipped))
        assert [e["t"] for e in events] == [1, 2]
        counts.append(skipped.to_json())
    assert counts == [{"torn": 1, "not_json": 1, "not_events": 2}] * 2


# ------------------------------------------------------ scenario messages name the value


MINIMAL = """
[database]
schema = ["CREATE TABLE t (x)"]

[[group]]
name = "w"
steps = [{ write = "INSERT INTO t VALUES (1)" }, "commit"]
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('name = "w"', 'name = "w"\ncount = 2.5'),
            "group[0].count: expected a whole number, got 2.5",
        ),
        (
            ('name = "w"', 'name = "w"\ncount = true'),
            "group[0].count: expected a whole number, got true",
        ),
        (
            ('name = "w"', 'name = "w"\ncount = "4"'),
            'group[0].count: expected a whole number, got "4" (a string)',
        ),
        (
            ('name = "w"', 'name = "w"\nstagger = "1s"'),
            'group[0].stagger: expected a number, got "1s" (a string)',
        ),
        (
            ('name = "w"', 'name = "w"\ncount = [1, 2]'),
            "group[0].count: expected a whole number, got [1, 2] (a list)",
        ),
        (
            ('name = "w"', 'name = "w"\nrepeat = 1979-05-27'),
            "group[0].repeat: expected a whole number, got 1979-05-27 (a date)",
        ),
        (
            ('name = "w"', 'name = "w"\nkind = "fiber"'),
            'group[0].kind: expected one of thread, process, coroutine, got "fiber"',
        ),
        (
            ('name = "w"', 'name = "w:1"'),
            "group[0].name: expected a non-empty name without ':', got \"w:1\"",
        ),
        (
            ("[database]", "[database]\nshared_cache = 1"),
            "database.shared_cache: expected true or false, got 1",
        ),
        (
            ("[database]", "[database]\nsetup = 5"),
            "database.setup: expected a list of SQL strings, got 5",
        ),
        (
            ('"commit"]', '"comit"]'),
            'group[0].steps[1]: expected begin, commit, rollback or a table, got "comit"',
        ),
        (
            ('"commit"]', "{ commit = false }]"),
            "group[0].steps[1].commit: expected true, got false",
        ),
        (('"commit"]', '{ read = "SELECT 1", write = "SELECT 2" }]'), "got 2: read, write"),
        (
            ('"commit"]', '{ signal = "" }]'),
            'group[0].steps[1].signal: expected an event name, got ""',
        ),
    ],
)
def test_a_bad_value_is_named_in_the_message(change: tuple[str, str], message: str) -> None:
    # `count = 2.5` said "expected a whole number, got a number".
    with pytest.raises(LockprobeError) as error:
        parse_scenario(MINIMAL.replace(*change), source="s.toml")
    assert message in str(error.value)


def test_a_long_value_is_cut_in_the_message() -> None:
    long = "x" * 200
    with pytest.raises(LockprobeError) as error:
        parse_scenario(MINIMAL.replace('name = "w"', f'name = "w"\ncount = "{long}"'))
    assert len(str(error.value)) < 120 and "…" in str(error.value)


def test_the_cli_names_the_value_in_one_line(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(MINIMAL.replace('name = "w"', 'name = "w"\ncount = 2.5'))
    code, _, err = lockprobe("run", str(scenario), "-q")
    assert code == 2
    assert err == f"lockprobe: {scenario}: group[0].count: expected a whole number, got 2.5\n"


CTRL_C_SCENARIO = """
name = "slow-processes"
[database]
journal_mode = "wal"
transaction_mode = "autocommit"
schema = ["CREATE TABLE t (worker INTEGER)"]

[[group]]
name = "slow"
kind = "process"
count = 2
steps = [{ write = "INSERT INTO t VALUES (:worker)" }, { sleep = 60 }]
"""


def test_ctrl_c_stops_a_run_with_worker_processes_quietly(tmp_path: Path) -> None:
    # A terminal's Ctrl-C goes to the whole process group: each worker process printed
    # "Process slow#0: Traceback ... KeyboardInterrupt" before the partial report.
    import os
    import signal
    import subprocess
    import sys
    import time

    scenario = tmp_path / "slow.toml"
    scenario.write_text(CTRL_C_SCENARIO)
    db = tmp_path / "app.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sqlite_lockprobe", "run", str(scenario), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 120  # a guard against a hang, not a speed requirement
        while True:  # both workers are inside their sleep step once both rows are there
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the workers never started"
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    if conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2:
                        break
            except sqlite3.OperationalError:
                pass  # not created yet
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "slow" in out  # the partial report follows
