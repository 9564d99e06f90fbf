from sqlite_lockprobe.diagnose import table_locked
from sqlite_lockprobe.diagnose.detectors import diagnose

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
