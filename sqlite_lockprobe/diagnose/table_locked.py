"""table-locked: SQLITE_LOCKED (6), "database table is locked", is not SQLITE_BUSY.

SQLITE_LOCKED is a conflict inside one process that no busy handler can wait out (the busy
handler is only invoked for SQLITE_BUSY: c3ref/busy_handler.html; rescode.html#locked):
- in a shared cache (`cache=shared`), connections share one b-tree and lock tables against
  each other: a table with an unfinished read on one connection cannot be written by another,
  and a second writer cannot start (btree.c querySharedCacheTableLock and
  sqlite3BtreeBeginTrans); the error is SQLITE_LOCKED_SHAREDCACHE (262) and vdbe.c
  OP_TableLock names the table: "database table is locked: NAME";
- on one connection, DROP TABLE fails while any statement of that connection is still
  running (vdbe.c OP_Destroy): the caller's own unfinished cursor is the holder.
"""

from __future__ import annotations

import re

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.evidence import at, code_name, short_sql
from sqlite_lockprobe.diagnose.model import (
    SQLITE_LOCKED,
    SQLITE_LOCKED_SHAREDCACHE,
    Call,
    OpenStatement,
    Timeline,
)
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
WORST_SHOWN = 3

_NAMED = re.compile(r"database (?:table|schema) is locked: (\S+)")
_TARGET = re.compile(
    r"^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM|"
    r"DROP\s+TABLE(?:\s+IF\s+EXISTS)?|ALTER\s+TABLE|CREATE\s+(?:UNIQUE\s+)?INDEX\s+\S+\s+ON)"
    r"\s+[\"`\[]?([\w.]+)",
    re.IGNORECASE,
)


def locked_table(call: Call) -> str | None:
    """The table named by SQLite's message, else the one the failed statement targets."""
    found = _NAMED.search(call.message or "")
    if found:
        return found.group(1)
    target = _TARGET.search(call.sql)
    return target.group(1).split(".")[-1] if target else None


def is_shared_cache_conflict(call: Call) -> bool:
    """262 from the extended code; without it (no probe, Python 3.10), a named table in the
    message comes only from OP_TableLock, which exists only for shared cache."""
    if call.ext_error is not None and call.ext_error != SQLITE_LOCKED:
        return call.ext_error == SQLITE_LOCKED_SHAREDCACHE
    return bool(_NAMED.search(call.message or ""))


def holding_statements(call: Call, timeline: Timeline, shared: bool) -> list[OpenStatement]:
    """The unfinished statements that can hold the lock this call met: other connections'
    (shared cache) or its own (DDL), those reading the locked table first."""
    table = (locked_table(call) or "").lower()
    candidates = [
        s for s in timeline.open_statements_at(call.t0) if (s.holder.conn != call.conn) == shared
    ]
    return sorted(
        candidates,
        key=lambda s: (0 if table and _mentions(s.sql, table) else 1, s.t0, s.holder.conn),
    )


def _mentions(sql: str, table: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(table)}(?!\w)", sql, re.IGNORECASE) is not None


def detect(timeline: Timeline) -> list[Finding]:
    """One finding for every call that failed with SQLITE_LOCKED, shared cache or not."""
    failures = [c for c in timeline.calls if c.error == SQLITE_LOCKED]
    if not failures:
        return []
    return [_finding(timeline, failures)]


def _holder_lines(
    call: Call, timeline: Timeline, is_shared: bool, shown: list[dict[str, object]]
) -> list[str]:
    """Who held the table lock this call met, as evidence lines; the statements named are
    added to `shown` (the finding's `holders`)."""
    origin = timeline.origin_ns
    holders = holding_statements(call, timeline, is_shared)
    if holders:
        lines = []
        for statement in holders[:2]:
            lines.append("  held by: " + _statement_line(statement, origin, is_shared))
            shown.append(
                {
                    "conn": statement.holder.conn,
                    "worker": statement.holder.worker,
                    "sql": statement.sql,
                    "opened_ms": round((statement.t0 - origin) / 1e6, 1),
                    "closed_by": statement.closed_by,
                }
            )
        return lines
    if not is_shared:
        return [
            f"  held by: an unfinished statement of {call.actor.describe()} itself (a "
            "cursor not exhausted or closed)"
        ]
    writers = timeline.write_holders_during(call.t0, call.t1 + 1, call.conn)
    if writers:
        return [
            f"  held by: the write transaction of {writers[0].holder.describe()} in "
            "the same shared cache (one writer at a time per shared cache)"
        ]
    return [
        "  held by: another connection of the same shared cache with an unfinished "
        "statement or open transaction on that table (not recorded: look for a "
        "cursor not exhausted)"
    ]


def _finding(timeline: Timeline, failures: list[Call]) -> Finding:
    origin = timeline.origin_ns
    shared = [c for c in failures if is_shared_cache_conflict(c)]
    own = [c for c in failures if not is_shared_cache_conflict(c)]
    tables = sorted({t for t in (locked_table(c) for c in failures) if t})
    evidence = [
        f"{len(failures)} call{'s' if len(failures) != 1 else ''} failed with SQLITE_LOCKED "
        f'("database table is locked") at once, with no busy wait: {len(shared)} in a shared '
        f"cache, {len(own)} on a connection with its own unfinished statement"
        + (f"; tables: {', '.join(tables)}" if tables else ""),
    ]
    shown_holders: list[dict[str, object]] = []
    for call in failures[:WORST_SHOWN]:
        evidence.append("failed: " + _failure_line(call, origin))
        evidence.extend(_holder_lines(call, timeline, call in shared, shown_holders))
    evidence.append(
        "busy_timeout cannot help: SQLite calls the busy handler only for SQLITE_BUSY; a table "
        "lock (SQLITE_LOCKED) fails at once, whatever the timeout"
    )
    fixes = [advice.no_shared_cache()] if shared else []
    fixes.append(advice.finish_cursors())
    kind = "both" if shared and own else ("shared-cache" if shared else "own-statement")
    first = failures[0]
    named = tables and all(c.ext_error is not None for c in failures)
    confidence = "high" if named else "medium"
    return Finding(
        pattern=PATTERN,
        title=_title(shared, own, tables),
        severity="error",
        confidence=confidence,
        explanation=(
            'SQLITE_LOCKED ("database table is locked") is not SQLITE_BUSY: it is a '
            "conflict inside one process. In a shared cache (cache=shared, common for "
            "in-memory test databases shared between threads) connections lock tables "
            "against each other: a table another connection is still reading cannot be "
            "written. On one connection, DROP TABLE fails while one of its statements is "
            "still running. Neither ever waits: busy_timeout does not apply."
        ),
        evidence=tuple(evidence),
        advice=tuple(fixes),
        facts={
            "failures": len(failures),
            "shared_cache": len(shared),
            "own_statement": len(own),
            "kind": kind,
            "tables": tables,
            "holders": shown_holders,
            "first": {
                "conn": first.conn,
                "worker": first.actor.worker,
                "sql": first.sql,
                "code": first.ext_error or first.error,
                "message": first.message,
                "start_ms": round((first.t0 - origin) / 1e6, 1),
                "call_site": first.actor.call_site,
            },
        },
    )


def _title(shared: list[Call], own: list[Call], tables: list[str]) -> str:
    where = f" ({', '.join(tables[:3])})" if tables else ""
    if shared and not own:
        return f"Shared-cache table lock{where}: SQLITE_LOCKED, which busy_timeout cannot help"
    if own and not shared:
        return f"A table is locked by the connection's own unfinished statement{where}"
    return f"Tables locked (SQLITE_LOCKED){where}: busy_timeout cannot help"


def _failure_line(call: Call, origin: int) -> str:
    code = code_name(call.ext_error or call.error)
    site = f" at {call.actor.call_site}" if call.actor.call_site else ""
    return (
        f"{call.actor.describe()} at {at(call.t0, origin)} running `{short_sql(call.sql)}`"
        f'{site}: {code} "{call.message}" after {(call.t1 - call.t0) / 1e6:.1f} ms'
    )


def _statement_line(statement: OpenStatement, origin: int, shared: bool) -> str:
    whose = "another connection of the same shared cache" if shared else "the same connection"
    return (
        f"the unfinished statement `{short_sql(statement.sql)}` of "
        f"{statement.holder.describe()} ({whose}), open since {at(statement.t0, origin)}, "
        f"until {statement.closed_by} at {at(statement.t1, origin)}"
    )
