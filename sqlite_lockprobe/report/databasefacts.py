"""The report header's lines about database files, for a recording that used several (a
traced test suite's temporary databases): how many in which journal mode, and which ones the
findings are about. Shared by trace's header and by `report` of a trace's log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlite_lockprobe.events.databases import DatabaseInfo
from sqlite_lockprobe.findings import Finding

# Up to this many databases are listed one per line; past it, counted by journal mode, and
# only the ones with findings listed.
LIST_DATABASES_UP_TO = 4

_MODE_WORDS = {"wal": "in WAL", "memory": "in memory", "off": "without a journal"}


def several_databases(
    databases: Sequence[DatabaseInfo], findings: Sequence[Finding]
) -> list[tuple[str, str]]:
    """How many databases in which mode, then each one (or, when many, each one a finding is
    about) with its mode and its findings' patterns."""
    facts = [("databases", f"{len(databases)} databases: {modes_summary(databases)}")]
    if len(databases) <= LIST_DATABASES_UP_TO:
        for db in databases:
            patterns = patterns_on(db, findings)
            facts.append(("", db.label + (f": {', '.join(patterns)}" if patterns else "")))
        return facts
    label = "findings on"
    for db in databases:
        patterns = patterns_on(db, findings)
        if patterns:
            facts.append((label, f"{db.label}: {', '.join(patterns)}"))
            label = ""
    return facts


def modes_summary(databases: Sequence[DatabaseInfo]) -> str:
    """'35 in WAL, 2 in rollback journal (delete)': WAL first, then by count."""
    counts = Counter(db.journal_mode for db in databases)
    order = sorted(counts, key=lambda mode: (mode != "wal", -counts[mode], mode))
    return ", ".join(
        f"{counts[mode]} {_MODE_WORDS.get(mode, f'in rollback journal ({mode})')}" for mode in order
    )


def databases_json(
    databases: Sequence[DatabaseInfo], findings: Sequence[Finding]
) -> list[dict[str, Any]]:
    """The `databases` list of the JSON report."""
    return [
        {
            "path": db.path,
            "journal_mode": db.journal_mode,
            "connections": len(db.connections),
            "findings": patterns_on(db, findings),
        }
        for db in databases
    ]


def patterns_on(db: DatabaseInfo, findings: Sequence[Finding]) -> list[str]:
    return sorted({f.pattern for f in findings if f.database == db.path})
