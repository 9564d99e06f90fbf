"""One pipeline for every source: events -> timeline -> summary and findings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.stats import RunSummary, summarize


@dataclass(frozen=True)
class Analysis:
    timeline: Timeline
    summary: RunSummary
    findings: list[Finding]

    @property
    def pattern_ids(self) -> list[str]:
        return sorted({f.pattern for f in self.findings})


def analyze(events: list[dict[str, Any]]) -> Analysis:
    timeline = build_timeline(events)
    return Analysis(timeline, summarize(timeline, events), diagnose(timeline))
