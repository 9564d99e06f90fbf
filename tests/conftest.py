"""Fixtures: real SQLite databases in tmp_path and real processes that hold locks on them."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sqlite_lockprobe.cli import cli

HOLDER = Path(__file__).with_name("holder.py")


def make_db(path: Path, wal: bool = False, rows: int = 20) -> Path:
    """A small database with table t; the connection is closed before returning, so this
    process holds no lock on it (inspect refuses to run in a process that does)."""
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, x)")
    conn.executemany("INSERT INTO t(x) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


class HolderProcess:
    """A running holder.py; `pid` is its process id, `stop()` releases its lock."""

    def __init__(self, db: Path, mode: str) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), str(db), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if line != "ready":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"holder {mode} did not get its lock: {line!r} {err}")

    def stop(self) -> str:
        """Tell it to finish; returns what it printed after "ready"."""
        if self.proc.poll() is None:
            out, _ = self.proc.communicate("\n")
            return out
        return ""

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def holder() -> Iterator[type[HolderProcess]]:
    """Start holders with holder(db, mode); all are stopped when the test ends."""
    started: list[HolderProcess] = []

    def start(db: Path, mode: str) -> HolderProcess:
        process = HolderProcess(db, mode)
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in reversed(started):
        with contextlib.suppress(Exception):
            process.stop()
        if process.proc.poll() is None:
            process.kill()


@pytest.fixture
def rollback_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "app.db")


@pytest.fixture
def wal_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "app.db", wal=True)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in `directory` with its bytes and mtime in nanoseconds."""
    return {
        entry.name: (entry.read_bytes(), os.stat(entry).st_mtime_ns)
        for entry in sorted(directory.iterdir())
        if entry.is_file()
    }


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
