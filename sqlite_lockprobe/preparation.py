"""Getting the database ready for a run: create or copy it, apply the scenario's settings,
and check every step's SQL compiles before any worker starts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.scenario import SQL_ACTIONS, Scenario

_SAMPLE_PARAMS = {"worker": 0, "group": "g", "pid": 0, "iteration": 0}


def prepare_database(scenario: Scenario, path: Path) -> dict[str, int | str]:
    """Apply journal mode, schema and setup rows; returns the settings the run will see."""
    settings = scenario.database
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise LockprobeError(f"{path}: cannot open database ({exc})") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        mode = conn.execute(f"PRAGMA journal_mode = {settings.journal_mode.upper()}").fetchone()[0]
        if mode.lower() != settings.journal_mode:
            raise LockprobeError(
                f"{path}: could not set journal_mode={settings.journal_mode} (SQLite kept {mode})"
            )
        conn.execute("BEGIN IMMEDIATE")
        for key, statements in (("schema", settings.schema), ("setup", settings.setup)):
            for i, sql in enumerate(statements):
                try:
                    conn.execute(sql)
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK")
                    raise LockprobeError(
                        f"{scenario.source}: database.{key}[{i}]: {exc} in: {sql}"
                    ) from None
        conn.execute("COMMIT")
        _check_steps_compile(conn, scenario)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        autocheckpoint = settings.wal_autocheckpoint
        if autocheckpoint is None:
            autocheckpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        return {
            "journal_mode": mode.lower(),
            "page_size": page_size,
            "wal_autocheckpoint": autocheckpoint,
        }
    except sqlite3.Error as exc:
        raise LockprobeError(f"{path}: cannot prepare database ({exc})") from None
    finally:
        conn.close()


def _check_steps_compile(conn: sqlite3.Connection, scenario: Scenario) -> None:
    """EXPLAIN compiles a statement without running it: a typo or a missing table is reported
    now, with its key, rather than as thousands of failed calls."""
    for i, group in enumerate(scenario.groups):
        for j, step in enumerate(group.steps):
            if step.action not in SQL_ACTIONS or not step.sql:
                continue
            key = f"group[{i}].steps[{j}].{step.action}"
            if not sqlite3.complete_statement(step.sql + ";") or _more_than_one(step.sql):
                raise LockprobeError(f"{scenario.source}: {key}: expected one SQL statement")
            try:
                conn.execute(f"EXPLAIN {step.sql}", _SAMPLE_PARAMS).fetchall()
            except sqlite3.Error as exc:
                raise LockprobeError(f"{scenario.source}: {key}: {exc} in: {step.sql}") from None


def _more_than_one(sql: str) -> bool:
    body = sql.strip().rstrip(";")
    return ";" in body and sqlite3.complete_statement(body.split(";", 1)[0] + ";")


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (safe while others write the source),
    opened read-only so the source is never modified."""
    if not source.is_file():
        raise LockprobeError(f"{source}: not a file")
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.DatabaseError as exc:
        raise LockprobeError(f"{source}: cannot copy database ({exc})") from None
