"""Findings: the one shape in which every source (run, trace, inspect, check) reports a problem.

A finding names a pattern from docs/patterns.md by its stable id, says how bad and how sure,
shows the evidence and gives advice. Informational facts never become findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")
CONFIDENCES = ("high", "medium", "low")


@dataclass(frozen=True)
class Advice:
    """One thing to change. `snippets` maps a stack (sqlite3, django, sqlalchemy, aiosqlite,
    pragma) to ready-to-paste code. `fix` is the same change as scenario settings
    (`transaction`, `busy_timeout_ms`, `journal_mode`, `synchronous`), which --compare-fix
    applies in a re-run; `automatic` says there is one."""

    text: str
    snippets: dict[str, str] = field(default_factory=dict)
    automatic: bool = False
    fix: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "snippets": dict(self.snippets),
            "automatic": self.automatic,
            "fix": dict(self.fix),
        }


@dataclass(frozen=True)
class Finding:
    """One problem found. `facts` is machine-readable evidence (counts, pids, durations in ms);
    `evidence` is the same evidence as sentences, worst instance first. `database` and
    `journal_mode` name the database file it is about and that file's mode, where known
    (set by the analysis, which diagnoses each database file on its own)."""

    pattern: str
    title: str
    severity: str
    confidence: str
    explanation: str
    evidence: tuple[str, ...]
    advice: tuple[Advice, ...]
    facts: dict[str, Any] = field(default_factory=dict)
    database: str | None = None
    journal_mode: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, not {self.confidence!r}")

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key: most harmful and most certain first."""
        return SEVERITIES.index(self.severity), CONFIDENCES.index(self.confidence)

    def to_json(self) -> dict[str, Any]:
        out = {
            "pattern": self.pattern,
            "title": self.title,
            "severity": self.severity,
            "confidence": self.confidence,
            "explanation": self.explanation,
            "evidence": {"lines": list(self.evidence), **self.facts},
            "advice": [a.to_json() for a in self.advice],
        }
        if self.database is not None or self.journal_mode is not None:
            out["database"] = {"path": self.database, "journal_mode": self.journal_mode}
        return out


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most harmful first; ties keep a stable order by pattern id, so output is deterministic."""
    return sorted(findings, key=lambda f: (f.rank, f.pattern))
