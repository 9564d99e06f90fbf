"""What `pytest --lockprobe` shows: a finding attributed to a test (`FindingInTest`, plain
data that crosses from xdist workers to the controller as JSON), the text a failed test
carries, the session's summary lines in pytest's own style, and the JSON report (the usual
envelope, each finding with its `nodeid`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.findings import CONFIDENCES, SEVERITIES, Finding
from sqlite_lockprobe.report.jsonreport import report_document

# A call site in the evidence: "at tests/test_app.py:12 view_a" (callsite.py's
# "file:line function"); "at +0.8 ms" is a time, not a site.
_SITE = re.compile(r"\bat (\S+?:\d+(?: [\w.<>]+)?)(?=[\s,;:)]|$)")


@dataclass(frozen=True)
class FindingInTest:
    """One finding of the events recorded during one test. `document` is the finding's own
    JSON (Finding.to_json); `code` the lines of test or application code it names."""

    nodeid: str
    document: dict[str, Any]
    code: tuple[str, ...]
    expected: bool = False

    @classmethod
    def of(cls, nodeid: str, finding: Finding, expected: bool) -> FindingInTest:
        return cls(nodeid, finding.to_json(), code_lines(finding), expected)

    @property
    def pattern(self) -> str:
        return str(self.document["pattern"])

    @property
    def severity(self) -> str:
        return str(self.document["severity"])

    @property
    def title(self) -> str:
        return str(self.document["title"])

    @property
    def rank(self) -> tuple[int, int]:
        return (
            SEVERITIES.index(self.severity),
            CONFIDENCES.index(str(self.document["confidence"])),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self.document,
            "nodeid": self.nodeid,
            "code": list(self.code),
            "expected": self.expected,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FindingInTest:
        document = {k: v for k, v in data.items() if k not in ("nodeid", "code", "expected")}
        return cls(data["nodeid"], document, tuple(data["code"]), bool(data["expected"]))


@dataclass(frozen=True)
class RecordedTest:
    """A test that made sqlite3 calls: how many, and the notes of its diagnosis (events
    dropped)."""

    nodeid: str
    calls: int
    patterns: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "calls": self.calls,
            "patterns": list(self.patterns),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordedTest:
        return cls(data["nodeid"], data["calls"], tuple(data["patterns"]), tuple(data["notes"]))


def code_lines(finding: Finding) -> tuple[str, ...]:
    """The call sites the finding's evidence names, each once, in the order named."""
    seen: dict[str, None] = {}
    for line in finding.evidence:
        for site in _SITE.findall(line):
            seen.setdefault(site, None)
    return tuple(seen)


def failure_text(findings: Iterable[Finding], missing: Iterable[str], notes: Iterable[str]) -> str:
    """What a test failed by lockprobe shows: each finding with its code lines, evidence and
    advice; the expected patterns not found."""
    lines: list[str] = []
    findings = list(findings)
    if findings:
        lines.append("lockprobe found during this test:")
    for finding in findings:
        lines.append(
            f"{finding.pattern} ({finding.severity}, {finding.confidence} confidence): "
            f"{finding.title}"
        )
        lines += [f"  code: {site}" for site in code_lines(finding)]
        lines += [f"  {line}" for line in finding.evidence]
        lines += [f"  advice: {advice.text}" for advice in finding.advice]
    missing = list(missing)
    if missing:
        lines.append(
            "lockprobe did not find the expected pattern"
            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)} during this test "
            "(@pytest.mark.lockprobe(expect=...))"
        )
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines)


def summary_lines(findings: list[FindingInTest]) -> list[str]:
    """Per test with findings, in the order the tests ran: its nodeid, then each finding's
    pattern, severity, title and code lines."""
    lines: list[str] = []
    by_test: dict[str, list[FindingInTest]] = {}
    for item in findings:
        by_test.setdefault(item.nodeid, []).append(item)
    for nodeid, items in by_test.items():
        lines.append(nodeid)
        for item in sorted(items, key=lambda f: (f.rank, f.pattern)):
            expected = ", expected" if item.expected else ""
            lines.append(f"  {item.pattern} ({item.severity}{expected}): {item.title}")
            lines += [f"    {site}" for site in item.code]
    return lines


def summary_title(findings: list[FindingInTest], recorded: list[RecordedTest]) -> str:
    tests = len({f.nodeid for f in findings})
    count = len(findings)
    return (
        f"lockprobe: {count} finding{'s' if count != 1 else ''} in {tests} of "
        f"{len(recorded)} test{'s' if len(recorded) != 1 else ''} that used sqlite3"
    )


def pytest_document(
    findings: list[FindingInTest], recorded: list[RecordedTest], notes: list[str]
) -> dict[str, Any]:
    """The JSON report: the envelope of every command (`command`: "pytest"), `findings` most
    harmful first, each with `nodeid`, `code` and `expected`; `pytest.tests`: the tests that
    used sqlite3."""
    document = report_document(
        "pytest",
        [],
        pytest={"tests": [t.to_json() for t in recorded], "notes": list(notes)},
    )
    ordered = sorted(findings, key=lambda f: (f.rank, f.pattern, f.nodeid))
    document["findings"] = [f.to_json() for f in ordered]
    return document
