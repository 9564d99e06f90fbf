import ast

import pytest

from sqlite_lockprobe.diagnose import advice

STACKS = {"sqlite3", "django", "sqlalchemy", "aiosqlite", "pragma"}
ALL_ADVICE = {
    "begin_immediate": advice.begin_immediate(),
    "busy_timeout": advice.busy_timeout(),
    "stopgap": advice.raise_busy_timeout_stopgap(10000),
    "wal_mode": advice.wal_mode(),
    "synchronous_normal": advice.synchronous_normal(),
    "short_transactions": advice.short_transactions(),
    "one_connection_per_thread": advice.one_connection_per_thread(),
    "single_writer": advice.single_writer(),
    "short_readers": advice.short_readers(),
    "close_external_holder": advice.close_external_holder(),
    "read_only_tools": advice.read_only_tools(),
    "schedule_elsewhere": advice.schedule_elsewhere(),
    "no_shared_cache": advice.no_shared_cache(),
    "finish_cursors": advice.finish_cursors(),
}
AUTOMATIC = {"begin_immediate", "busy_timeout", "stopgap", "wal_mode", "synchronous_normal"}


@pytest.mark.parametrize("name", sorted(ALL_ADVICE))
def test_snippets_use_known_stacks_and_python_ones_parse(name):
    item = ALL_ADVICE[name]
    assert item.text and item.snippets
    assert set(item.snippets) <= STACKS
    for stack, code in item.snippets.items():
        if stack != "pragma":
            compile(code, f"<{name}:{stack}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_only_settings_a_rerun_can_change_are_automatic():
    assert {name for name, item in ALL_ADVICE.items() if item.automatic} == AUTOMATIC


def test_begin_immediate_recipes_match_the_documented_versions():
    snippets = advice.begin_immediate().snippets
    assert (
        "Django >= 5.1" in snippets["django"]
        and '"transaction_mode": "IMMEDIATE"' in (snippets["django"])
    )
    assert "isolation_level = None" in snippets["sqlalchemy"]
    assert 'exec_driver_sql("BEGIN IMMEDIATE")' in snippets["sqlalchemy"]
    assert "sync_engine" in snippets["sqlalchemy"]
    assert "autocommit=True" in snippets["sqlite3"]


def test_busy_timeout_units_are_right_per_stack():
    snippets = advice.busy_timeout(5000).snippets
    assert snippets["pragma"] == "PRAGMA busy_timeout = 5000;"
    assert "timeout=5.0" in snippets["sqlite3"]
