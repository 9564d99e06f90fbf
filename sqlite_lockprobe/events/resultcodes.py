"""SQLite result codes by name (https://sqlite.org/rescode.html)."""

from __future__ import annotations

# The codes lockprobe tells apart (the diagnosis, the run engine); the probe has its own.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_BUSY_RECOVERY = 261
SQLITE_LOCKED_SHAREDCACHE = 262
SQLITE_BUSY_SNAPSHOT = 517
SQLITE_BUSY_TIMEOUT = 773

NAMES = {
    SQLITE_BUSY: "SQLITE_BUSY",
    SQLITE_LOCKED: "SQLITE_LOCKED",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    19: "SQLITE_CONSTRAINT",
    SQLITE_BUSY_RECOVERY: "SQLITE_BUSY_RECOVERY",
    SQLITE_LOCKED_SHAREDCACHE: "SQLITE_LOCKED_SHAREDCACHE",
    SQLITE_BUSY_SNAPSHOT: "SQLITE_BUSY_SNAPSHOT",
    518: "SQLITE_LOCKED_VTAB",
    SQLITE_BUSY_TIMEOUT: "SQLITE_BUSY_TIMEOUT",
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
