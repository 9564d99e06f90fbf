"""Which database files a recording used, and each one's journal mode.

A traced program can open many files (a test suite's temporary databases), some in WAL and
some not. Locks belong to one file, and so do waits, holds and the words for them (the WAL
write lock or RESERVED, a WAL snapshot or SHARED): the diagnosis is made per file
(analysis.py), and each finding names its file and that file's mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# A new database file is in the rollback journal's DELETE mode until something sets another
# (https://sqlite.org/pragma.html#pragma_journal_mode).
DEFAULT_JOURNAL_MODE = "delete"
IN_MEMORY = "memory"

# `PRAGMA journal_mode = X` on the main database (`main.` or no schema), any quoting.
_SETS_JOURNAL_MODE = re.compile(
    r"\bpragma\s+(?:[\"'`\[]?main[\"'`\]]?\s*\.\s*)?journal_mode\s*(?:=|\()\s*[\"'`]?(\w+)",
    re.IGNORECASE,
)
_JOURNAL_MODES = frozenset(("delete", "truncate", "persist", "memory", "wal", "off"))


def journal_mode_set_by(sql: str) -> str | None:
    """The journal mode a statement sets on its main database, if it sets one."""
    if "ournal_mode" not in sql and "OURNAL_MODE" not in sql:
        return None
    match = _SETS_JOURNAL_MODE.search(sql)
    mode = match.group(1).lower() if match else None
    return mode if mode in _JOURNAL_MODES else None


@dataclass(frozen=True)
class DatabaseInfo:
    """One database file (path None: in-memory or temporary databases, or a log that does not
    say), its journal mode as last known, and the connections that used it."""

    path: str | None
    journal_mode: str
    connections: tuple[str, ...]
    page_size: int | None = None

    @property
    def label(self) -> str:
        return f"{self.path or 'in-memory databases'} ({self.journal_mode})"


class DatabaseLog:
    """Follows what the events say of database files, in time order: `open` (the file, and
    its mode read from the header), `meta` (the mode read again, and the recording's database),
    and successful calls that set journal_mode. The last word on a file wins. The probe reads
    the header right after a `PRAGMA journal_mode=WAL` call, before the statement has ended and
    written it, so that statement itself is taken at its word when it succeeds."""

    def __init__(self) -> None:
        self.conn_paths: dict[str, str | None] = {}
        self.recording_db: str | None = None  # the first meta event's database
        self._paths_known = False  # some open event said which file (trace)
        self._modes: dict[str | None, str] = {}
        self._page_sizes: dict[str | None, int] = {}
        self._wal_sample_dbs: dict[int, str] = {}

    def opened(self, event: dict[str, Any]) -> None:
        if "db" in event:
            self._paths_known = True
        path = event.get("db")
        self.conn_paths[event["conn"]] = path
        mode = event.get("journal_mode")
        if mode and path is not None:
            self._modes[path] = str(mode).lower()

    def meta(self, event: dict[str, Any]) -> None:
        db = event.get("db")
        if self.recording_db is None and db:
            self.recording_db = str(db)
        mode, page_size = event.get("journal_mode"), event.get("page_size")
        if db and mode:
            self._modes[db] = str(mode).lower()
        if db and page_size:
            self._page_sizes[db] = int(page_size)

    def wal_sample(self, event: dict[str, Any]) -> None:
        """A `wal` event that names its database file (the sample itself does not)."""
        if event.get("db"):
            self._wal_sample_dbs[int(event["t"])] = str(event["db"])

    def set_mode(self, conn: str, mode: str) -> None:
        """A call on `conn` set the journal mode of its database."""
        if conn in self.conn_paths and self.conn_paths[conn] is not None:
            self._modes[self.conn_paths[conn]] = mode

    def path_of(self, conn: str) -> str | None:
        """The database file of a connection: the one its open event named; in a log whose
        open events name none (`run`, one database), the recording's database."""
        if not self._paths_known:
            return self.recording_db
        return self.conn_paths.get(conn)

    def wal_sample_db(self, t: int) -> str | None:
        return self._wal_sample_dbs.get(t)

    def databases(self, connections: list[str], default_mode: str) -> tuple[DatabaseInfo, ...]:
        """The databases of these connections, in the order first opened. A file whose mode
        nothing said was new and never changed (`default_mode` where the log does not name
        files: the recording's own)."""
        by_path: dict[str | None, list[str]] = {}
        for conn in connections:
            by_path.setdefault(self.path_of(conn), []).append(conn)
        infos = []
        for path, conns in by_path.items():
            if path is None:
                mode = default_mode if not self._paths_known else IN_MEMORY
            else:
                fallback = DEFAULT_JOURNAL_MODE if self._paths_known else default_mode
                mode = self._modes.get(path, fallback)
            infos.append(DatabaseInfo(path, mode, tuple(conns), self._page_sizes.get(path)))
        return tuple(infos)
