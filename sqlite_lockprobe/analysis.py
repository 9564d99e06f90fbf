"""One pipeline for every source: events -> timeline -> summary and findings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.stats import ActivityCounter, RunSummary, summarize


@dataclass(frozen=True)
class Analysis:
    timeline: Timeline
    summary: RunSummary
    findings: list[Finding]
    activity: ActivityCounter

    @property
    def pattern_ids(self) -> list[str]:
        return sorted({f.pattern for f in self.findings})


def analyze(events: Iterable[dict[str, Any]]) -> Analysis:
    """One pass over the events (a list, or a stream read from a log): nothing but the
    timeline's spans and the counters is kept."""
    activity = ActivityCounter()
    timeline = build_timeline(activity.observe(events))
    return Analysis(timeline, summarize(timeline, activity), diagnose(timeline), activity)
