"""What an SQL statement does to locks, from its leading keywords (lang_transaction.html)."""

from __future__ import annotations

import re
from functools import lru_cache

_WRITE_WORDS = {
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "CREATE",
    "DROP",
    "ALTER",
    "REINDEX",
    "VACUUM",
    "ANALYZE",
}
_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


@lru_cache(maxsize=8192)
def statement_kind(sql: str) -> str:
    """One of: begin, begin-write (IMMEDIATE/EXCLUSIVE take the write lock at once), commit,
    rollback, savepoint, release, write, read, other."""
    words = sql.lstrip(" \t\r\n(").split(None, 3)
    if not words:
        return "other"
    first = words[0].upper().rstrip(";")
    if first == "BEGIN":
        second = words[1].upper().rstrip(";") if len(words) > 1 else ""
        return "begin-write" if second in ("IMMEDIATE", "EXCLUSIVE") else "begin"
    if first in ("COMMIT", "END"):
        return "commit"
    if first == "ROLLBACK":
        rest = " ".join(words[1:3]).upper()
        return "rollback" if not rest.startswith("TO") and " TO" not in f" {rest}" else "other"
    if first == "SAVEPOINT":
        return "savepoint"
    if first == "RELEASE":
        return "release"
    if first in _WRITE_WORDS:
        return "write"
    if first == "WITH":
        return "write" if _CTE_WRITE.search(sql) else "read"
    if first in ("SELECT", "VALUES"):
        return "read"
    return "other"
