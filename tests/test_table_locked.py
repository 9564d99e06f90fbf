"""table-locked end to end: real SQLITE_LOCKED from a shared cache and from DDL under an
unfinished cursor, through the run engine's open_read/close_reads steps."""

from __future__ import annotations

import pytest

from sqlite_lockprobe.analysis import analyze
from sqlite_lockprobe.runner import run_scenario
from sqlite_lockprobe.scenario import load_scenario, parse_scenario

pytestmark = pytest.mark.probe


def test_shared_cache_builtin_reproduces_django_29062() -> None:
    result = run_scenario(load_scenario("shared-cache-table-locked"))
    failed = [e for e in result.events if e["k"] == "call" and e["err"] is not None]
    assert [(e["err"], e["ext"], e["busy"]) for e in failed] == [(6, 262, 0)]
    assert failed[0]["msg"] == "database table is locked: app_item"
    analysis = analyze(result.events)
    [finding] = analysis.findings
    assert finding.pattern == "table-locked"
    assert finding.facts["tables"] == ["app_item"]
    assert finding.facts["holders"][0]["worker"] == "test_thread#0"
    assert finding.facts["holders"][0]["sql"].startswith("SELECT id, name FROM app_item")


DDL_UNDER_CURSOR = """
[database]
transaction_mode = "autocommit"
schema = ["CREATE TABLE item (id INTEGER PRIMARY KEY)", "CREATE TABLE item_old (id INTEGER)"]
setup = ["INSERT INTO item (id) VALUES (1), (2), (3)"]

[[group]]
name = "migration"
on_error = "continue"
steps = [
  { open_read = "SELECT id FROM item" },
  { write = "DROP TABLE item_old" },
  { close_reads = true },
  { write = "DROP TABLE item_old" },
]
"""


def test_drop_table_while_own_cursor_is_open_is_table_locked_then_works_once_closed() -> None:
    result = run_scenario(parse_scenario(DDL_UNDER_CURSOR))
    calls = [e for e in result.events if e["k"] == "call"]
    assert [(c["op"], c["err"]) for c in calls] == [
        ("open_read", None),
        ("write", 6),
        ("close_read", None),
        ("write", None),
    ]
    [finding] = analyze(result.events).findings
    assert finding.pattern == "table-locked"
    assert finding.facts["kind"] == "own-statement"
    assert finding.facts["tables"] == ["item_old"]
    [holder] = finding.facts["holders"]
    assert holder["sql"] == "SELECT id FROM item" and holder["closed_by"] == "cursor closed"
    assert holder["conn"] == finding.facts["first"]["conn"]


def test_open_reads_are_closed_at_the_end_of_the_pass() -> None:
    scenario = parse_scenario(
        """
[database]
schema = ["CREATE TABLE t (x)"]
setup = ["INSERT INTO t VALUES (1), (2)"]
[[group]]
name = "g"
repeat = 2
steps = [{ open_read = "SELECT x FROM t" }]
"""
    )
    result = run_scenario(scenario)
    ops = [e["op"] for e in result.events if e["k"] == "call"]
    assert ops == ["open_read", "close_read", "open_read", "close_read"]
    assert analyze(result.events).findings == []
