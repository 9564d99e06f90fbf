"""SQLite result codes by name (https://sqlite.org/rescode.html)."""

from __future__ import annotations

NAMES = {
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    19: "SQLITE_CONSTRAINT",
    261: "SQLITE_BUSY_RECOVERY",
    262: "SQLITE_LOCKED_SHAREDCACHE",
    517: "SQLITE_BUSY_SNAPSHOT",
    518: "SQLITE_LOCKED_VTAB",
    773: "SQLITE_BUSY_TIMEOUT",
    1555: "SQLITE_CONSTRAINT_PRIMARYKEY",
    2067: "SQLITE_CONSTRAINT_UNIQUE",
}


def code_name(code: int | None) -> str:
    """'SQLITE_BUSY_SNAPSHOT (517)': the name users search for, and the number they see;
    an extended code without a name of its own falls back to its primary code's name."""
    if code is None:
        return "no error"
    name = NAMES.get(code) or NAMES.get(code & 0xFF) or "SQLite error"
    return f"{name} ({code})"
