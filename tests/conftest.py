from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from sqlite_lockprobe.cli import cli


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A real database file with one table, in rollback-journal mode."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.execute("INSERT INTO t (v) VALUES (0)")
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def invoke():
    """Run the real CLI in-process; returns click's Result."""
    runner = CliRunner()

    def _invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return _invoke
