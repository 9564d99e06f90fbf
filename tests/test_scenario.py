"""Scenario files: valid ones load with their defaults; every mistake is one clear line that
names the file and the key, through the API and through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sqlite_lockprobe.diagnose.detectors import DETECTORS
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.run.scenario import builtin_names, load_scenario, parse_scenario

MINIMAL = """
[database]
schema = ["CREATE TABLE t (x)"]

[[group]]
name = "w"
steps = [{ write = "INSERT INTO t VALUES (1)" }, "commit"]
"""


def test_minimal_scenario_gets_documented_defaults() -> None:
    s = parse_scenario(MINIMAL, source="s.toml", default_name="s")
    assert s.name == "s"
    assert s.database.journal_mode == "delete" and s.database.busy_timeout_ms == 5000
    assert s.database.transaction_mode == "deferred"
    (group,) = s.groups
    assert (group.kind, group.count, group.repeat, group.connection) == (
        "thread",
        1,
        1,
        "per-worker",
    )
    assert [st.action for st in group.steps] == ["write", "commit"]


def test_open_read_close_reads_and_shared_cache_load() -> None:
    s = parse_scenario(
        MINIMAL.replace("[database]", "[database]\nshared_cache = true").replace(
            '"commit"]', '{ open_read = "SELECT x FROM t" }, { close_reads = true }]'
        )
    )
    assert s.database.shared_cache is True
    steps = s.groups[0].steps
    assert (steps[1].action, steps[1].sql) == ("open_read", "SELECT x FROM t")
    assert steps[2].action == "close_reads"
    assert parse_scenario(MINIMAL).database.shared_cache is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n" + MINIMAL, "s.toml: bogus: unknown key"),
        (MINIMAL + "\nbogus = 1\n", "s.toml: group[0].bogus: unknown key"),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\ncount = "3"'),
            'group[0].count: expected a whole number, got "3" (a string)',
        ),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\ncount = 0'),
            "group[0].count: expected a number from 1 to 5000, got 0",
        ),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\nkind = "process"\ncount = 65'),
            "group[0].count: expected a number from 1 to 64, got 65",
        ),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\nkind = "fiber"'),
            "group[0].kind: expected one of thread, process, coroutine",
        ),
        (
            MINIMAL.replace("[database]", '[database]\njournal_mode = "wall"'),
            "database.journal_mode: expected one of delete, truncate, persist, wal",
        ),
        (
            MINIMAL.replace("[database]", "[database]\nbusy_timeout_ms = -1"),
            "database.busy_timeout_ms: expected a number from 0 to 3600000, got -1",
        ),
        (
            MINIMAL.replace('"commit"]', "{ sleep = -0.5 }]"),
            "group[0].steps[1].sleep: expected a number from 0 to 3600",
        ),
        (
            MINIMAL.replace('"commit"]', '{ read = "SELECT 1", write = "SELECT 2" }]'),
            "group[0].steps[1]: expected exactly one action",
        ),
        (
            MINIMAL.replace('"commit"]', '{ wait = "never" }]'),
            "group[0].steps[1].wait: no step signals 'never'",
        ),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\nkind = "process"\nconnection = "shared"'),
            "group[0].connection: a connection cannot be shared between processes",
        ),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\nrepeat = 2\nduration = 1.0'),
            "group[0]: give either repeat or duration, not both",
        ),
        (
            MINIMAL.replace('name = "w"', 'name = "w"\nblocking = false'),
            "group[0].blocking: only coroutine groups have this setting",
        ),
        (
            MINIMAL.replace("[database]", '[database]\nshared_cache = "yes"'),
            'database.shared_cache: expected true or false, got "yes" (a string)',
        ),
        (
            MINIMAL.replace('"commit"]', "{ open_read = 1 }]"),
            "group[0].steps[1].open_read: expected a string, got 1",
        ),
        (
            MINIMAL.replace('"commit"]', '{ open_read = " " }]'),
            'group[0].steps[1].open_read: expected an SQL statement, got " "',
        ),
        (
            MINIMAL.replace('"commit"]', "{ close_reads = false }]"),
            "group[0].steps[1].close_reads: expected true, got false",
        ),
        ("[[group]]\nname = 'w'\n", "group[0].steps: every group needs a list of steps"),
        ("[database]\n", "group: a scenario needs at least one [[group]] of workers"),
        ("name = [", "s.toml: not valid TOML"),
    ],
)
def test_bad_scenarios_are_rejected_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(LockprobeError) as error:
        parse_scenario(text, source="s.toml")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_every_builtin_scenario_loads_and_expects_known_patterns() -> None:
    names = builtin_names()
    assert {"upgrade-deadlock", "healthy", "aiosqlite-convoy"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.description, name
        assert scenario.expect is not None, f"{name} has no expect list"
        assert set(scenario.expect) <= set(DETECTORS), name


def test_unknown_builtin_name_lists_the_known_ones() -> None:
    with pytest.raises(LockprobeError, match="built-in: .*upgrade-deadlock"):
        load_scenario("no-such-scenario")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            MINIMAL.replace("[database]", "[database]\nsynchronous = 3"),
            "database.synchronous: expected a string",
        ),
        (
            MINIMAL.replace("INSERT INTO t VALUES (1)", "INSRT INTO t VALUES (1)"),
            'group[0].steps[0].write: near "INSRT": syntax error',
        ),
        (
            MINIMAL.replace("INSERT INTO t VALUES (1)", "INSERT INTO missing VALUES (1)"),
            "group[0].steps[0].write: no such table: missing",
        ),
        (
            MINIMAL.replace("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1); DROP TABLE t"),
            "group[0].steps[0].write: expected one SQL statement",
        ),
    ],
)
def test_cli_reports_a_bad_scenario_in_one_line_with_exit_code_2(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    proc = _cli("run", str(path), "-q")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"lockprobe: {path}: ") and expected in proc.stderr


def test_cli_missing_scenario_file_and_directory(tmp_path: Path) -> None:
    missing = _cli("run", str(tmp_path / "nope.toml"), "-q")
    assert missing.returncode == 2 and "no such scenario file" in missing.stderr
    directory = _cli("run", str(tmp_path), "-q")
    assert directory.returncode == 2 and "is a directory" in directory.stderr
    assert "Traceback" not in missing.stderr + directory.stderr
