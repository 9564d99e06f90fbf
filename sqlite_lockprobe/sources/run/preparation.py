"""Getting the database ready for a run: create or copy it, apply the scenario's settings,
and check every step's SQL compiles before any worker starts."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.run.scenario import SQL_ACTIONS, Scenario

_SAMPLE_PARAMS = {"worker": 0, "group": "g", "pid": 0, "iteration": 0}


def prepare_database(scenario: Scenario, path: Path) -> dict[str, Any]:
    """Apply journal mode, schema and setup rows; returns the settings the run will see.

    A database that already has the schema's tables (a copy of one the scenario made on an
    earlier run, or of the application's own) keeps them as they are: a CREATE of an object
    that was there before is skipped, and then `setup` is not run either, the rows being
    there already. `schema_kept` names what was kept, `setup_run` says whether setup ran."""
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
        existing = _schema_objects(conn)
        kept: list[str] = []
        for i, sql in enumerate(settings.schema):
            try:
                conn.execute(sql)
            except sqlite3.Error as exc:
                there = _already_there(exc, existing)
                if there is None:
                    conn.execute("ROLLBACK")
                    raise LockprobeError(
                        f"{scenario.source}: database.schema[{i}]: {exc} in: {sql}"
                    ) from None
                kept.append(there)
        setup = () if kept else settings.setup
        for i, sql in enumerate(setup):
            try:
                conn.execute(sql)
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise LockprobeError(
                    f"{scenario.source}: database.setup[{i}]: {exc} in: {sql}"
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
            "schema_kept": kept,
            "setup_run": not kept and bool(settings.setup),
        }
    except sqlite3.Error as exc:
        raise LockprobeError(f"{path}: cannot prepare database ({exc})") from None
    finally:
        conn.close()


# SQLite's message for a CREATE of a name in use (build.c, trigger.c): "table a already
# exists", "index i already exists", "view v ...", "trigger t ...". (An index named like a
# table says "there is already a table named a": a conflict, not the same schema.)
_ALREADY_THERE = re.compile(r"^(table|index|view|trigger) (.+) already exists$")


def _schema_objects(conn: sqlite3.Connection) -> set[str]:
    """The names in the database's schema, lower-cased (SQLite's names are case-blind)."""
    return {name.lower() for (name,) in conn.execute("SELECT name FROM sqlite_master")}


def _already_there(exc: sqlite3.Error, existing: set[str]) -> str | None:
    """`table a` when `exc` says a CREATE met an object the database had before preparing
    started; None for any other error (a schema that creates the same name twice too)."""
    match = _ALREADY_THERE.match(str(exc))
    if match is None:
        return None
    kind, name = match.group(1), match.group(2).strip('"`[]')
    return f"{kind} {name}" if name.lower() in existing else None


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
