"""table-locked: the detector on hand-built timelines, then end to end: real SQLITE_LOCKED
from a shared cache and from DDL under an unfinished cursor, through the run engine's
open_read/close_reads steps. The end-to-end tests are marked `probe`."""

from __future__ import annotations

import pytest

from sqlite_lockprobe.diagnose import table_locked
from sqlite_lockprobe.diagnose.analysis import analyze
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import load_scenario, parse_scenario

from .builders import TimelineBuilder


def test_shared_cache_write_against_an_unfinished_read_names_table_and_reader():
    tl = TimelineBuilder()
    reader, writer = tl.conn("reader"), tl.conn("writer")
    tl.open_statement(reader, "SELECT id FROM other", 0, 50)
    tl.open_statement(reader, "SELECT id, name FROM app_item", 1, 50)
    tl.locked(
        writer,
        10,
        "INSERT INTO app_item (name) VALUES ('x')",
        "database table is locked: app_item",
        262,
    )
    [f] = table_locked.detect(tl.build())
    assert f.pattern == "table-locked" and f.severity == "error" and f.confidence == "high"
    assert f.facts["kind"] == "shared-cache" and f.facts["tables"] == ["app_item"]
    # The statement reading the locked table comes first, before older unrelated ones.
    assert f.facts["holders"][0]["sql"] == "SELECT id, name FROM app_item"
    assert f.facts["holders"][0]["conn"] == "reader"
    assert any("SQLITE_LOCKED_SHAREDCACHE (262)" in line for line in f.evidence)
    assert any("busy_timeout cannot help" in line for line in f.evidence)
    assert [a.text for a in f.advice][0].startswith("Do not use shared cache")


def test_drop_table_under_the_connections_own_cursor_blames_that_cursor():
    tl = TimelineBuilder()
    conn = tl.conn("app")
    other = tl.conn("other")
    tl.open_statement(other, "SELECT * FROM logs", 0, 100)  # another connection: irrelevant
    tl.open_statement(conn, "SELECT * FROM logs", 5, 100)
    tl.locked(conn, 20, "DROP TABLE logs_old")
    [f] = table_locked.detect(tl.build())
    assert f.facts["kind"] == "own-statement" and f.facts["tables"] == ["logs_old"]
    assert [h["conn"] for h in f.facts["holders"]] == ["app"]
    assert len(f.advice) == 1 and "fetchall()" in f.advice[0].text


def test_without_extended_code_a_named_table_still_means_shared_cache():
    """Python 3.10 without the probe: only the message is left (OP_TableLock names tables)."""
    tl = TimelineBuilder()
    writer = tl.conn("writer")
    tl.locked(writer, 0, "UPDATE t SET x = 1", "database table is locked: t", ext=None)
    [f] = table_locked.detect(tl.build())
    assert f.facts["kind"] == "shared-cache" and f.confidence == "medium"


def test_table_locked_is_not_a_busy_wait_and_claims_nothing_else():
    tl = TimelineBuilder()
    writer = tl.conn("writer", timeout_ms=0)
    tl.locked(writer, 0, "INSERT INTO t VALUES (1)", "database table is locked: t", 262)
    timeline = tl.build()
    assert timeline.waits == ()
    assert [f.pattern for f in diagnose(timeline)] == ["table-locked"]


# ------------------------------------------------------------ end to end


@pytest.mark.probe
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


@pytest.mark.probe
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


@pytest.mark.probe
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
