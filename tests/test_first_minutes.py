"""A new user's first minutes: a typo in a scenario file is named with the value given.
The real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sqlite_lockprobe.cli import cli
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.scenario import parse_scenario


def lockprobe(*args: str) -> tuple[int, str, str]:
    """The CLI in-process: exit code, stdout, stderr (an 80-column console)."""
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "80"})
    return result.exit_code, result.stdout, result.stderr


def flat(text: str) -> str:
    """The report's words, whatever the console's width."""
    return " ".join(text.split())


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
