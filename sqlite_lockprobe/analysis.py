"""One pipeline for every source: events -> timeline -> summary and findings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import OsLock, Timeline
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.gctuning import fewer_collections
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
    timeline's spans and the counters is kept. The cyclic collector runs less often meanwhile,
    as while a workload runs: the spans survive every collection, and at the default
    threshold it went over them again and again (1 s of a 1,000,000-event log's 8)."""
    activity = ActivityCounter()
    with fewer_collections():
        counted = activity.attributing(events)
        timeline = with_process_details(build_timeline(counted, activity=activity))
        return Analysis(timeline, summarize(timeline, activity), diagnose(timeline), activity)


def with_process_details(timeline: Timeline) -> Timeline:
    """Complete what the probe saw of outside lock holders (name, command line, user, start
    time) from psutil, for processes still alive. What the probe read at sample time wins: the
    pid may have been reused since, so psutil's answer is used only where it agrees."""
    outside = {
        lock.pid
        for sample in timeline.os_lock_samples
        for lock in sample.locks
        if lock.pid is not None and lock.pid not in timeline.recorded_pids
    }
    if not outside:
        return timeline
    from sqlite_lockprobe.oslocks import process_info  # psutil: only when there is someone

    infos = {pid: process_info(pid) for pid in sorted(outside)}

    def complete(lock: OsLock) -> OsLock:
        info = infos.get(lock.pid) if lock.pid is not None else None
        if info is None or not info.alive:
            return lock
        if lock.cmdline is not None and info.cmdline is not None and lock.cmdline != info.cmdline:
            return lock  # another process got this pid since
        return replace(
            lock,
            process_name=lock.process_name or info.name,
            cmdline=lock.cmdline or info.cmdline,
            user=lock.user or info.user,
            started=lock.started if lock.started is not None else info.started,
        )

    samples = tuple(
        replace(sample, locks=tuple(complete(lock) for lock in sample.locks))
        for sample in timeline.os_lock_samples
    )
    return replace(timeline, os_lock_samples=samples)
