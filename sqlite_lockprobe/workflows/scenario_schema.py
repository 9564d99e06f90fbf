"""The schema a scenario made from a log needs, without any of the program's data.

Read from the database file the log names, opened read-only (the user's database is never
written), with generated rows; else the CREATE statements the log shows; else a note saying
neither was possible.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Rows generated per table at most (the count is the file's own, read with count(*)).
MAX_GENERATED_ROWS = 1000


def schema_for(path: str | None, creates: list[str]) -> tuple[list[str], list[str], str | None]:
    """The schema and generated rows from the database file (opened read-only), else the
    CREATE statements of the log; a note when neither was possible or rows were not made."""
    problem = "the log names no database file"
    if path and Path(path).is_file():
        try:
            return (*_read_schema(path), None)
        except sqlite3.Error as exc:
            problem = f"{path} could not be read ({exc})"
    elif path:
        problem = f"{path} is no longer there"
    if creates:
        unique = list(dict.fromkeys(creates))
        return unique, [], f"schema from the log's CREATE statements ({problem}); no rows"
    return (
        [],
        [],
        (
            f"no schema: {problem} and the log shows no CREATE statement; add [database] schema "
            "(your CREATE TABLE statements) before running this file"
        ),
    )


def _read_schema(path: str) -> tuple[list[str], list[str]]:
    escaped = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    uri = f"file:{escaped}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        ).fetchall()
        virtual = [n for t, n, sql in rows if t == "table" and sql.upper().startswith("CREATE V")]
        schema, setup = [], []
        for kind, name, sql in rows:
            if any(name.startswith(f"{v}_") for v in virtual):
                continue  # a virtual table's shadow table: its CREATE VIRTUAL TABLE makes it
            schema.append(sql)
            if kind == "table" and name not in virtual:
                rows_sql = _generated_rows(conn, name)
                if rows_sql:
                    setup.append(rows_sql)
        return schema, setup
    finally:
        conn.close()


def _generated_rows(conn: sqlite3.Connection, table: str) -> str | None:
    """As many rows as the table has (at most MAX_GENERATED_ROWS), every value generated from
    the row number by the column's declared type: none of the file's values."""
    quoted = '"' + table.replace('"', '""') + '"'
    (count,) = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()
    count = min(int(count), MAX_GENERATED_ROWS)
    columns = conn.execute(f"PRAGMA table_info({quoted})").fetchall()
    if not count or not columns:
        return None
    names = ", ".join('"' + c[1].replace('"', '""') + '"' for c in columns)
    values = ", ".join(_generated_value(str(c[2] or "")) for c in columns)
    return (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
        f"INSERT INTO {quoted} ({names}) SELECT {values} FROM n"
    )


def _generated_value(declared: str) -> str:
    """A value for row i by the column's type affinity (https://sqlite.org/datatype3.html)."""
    upper = declared.upper()
    if "INT" in upper:
        return "i"
    if any(t in upper for t in ("CHAR", "CLOB", "TEXT")):
        return "'row ' || i"
    if "BLOB" in upper or not upper:
        return "randomblob(8)"
    if any(t in upper for t in ("REAL", "FLOA", "DOUB")):
        return "i * 1.0"
    return "i"
