"""One pipeline for every source: events -> timeline -> summary and findings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any

from sqlite_lockprobe.diagnose.activity import ActivityCounter
from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import OsLock, Timeline
from sqlite_lockprobe.diagnose.stats import RunSummary, summarize
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.events.databases import DatabaseInfo, DatabaseLog
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.probe.gctuning import fewer_collections


@dataclass(frozen=True)
class Analysis:
    timeline: Timeline
    summary: RunSummary
    findings: list[Finding]
    activity: ActivityCounter
    databases: tuple[DatabaseInfo, ...] = ()

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
        databases = activity.databases.databases(list(timeline.connections), timeline.journal_mode)
        findings = diagnose_each_database(timeline, databases, activity.databases)
        summary = summarize(timeline, activity)
        return Analysis(timeline, summary, findings, activity, databases)


def diagnose_each_database(
    timeline: Timeline, databases: tuple[DatabaseInfo, ...], log: DatabaseLog
) -> list[Finding]:
    """The findings of each database file on its own timeline, with its own journal mode,
    each naming its file: locks, and so waits and holds, belong to one file, and what they are
    called (RESERVED or the WAL write lock) depends on that file's mode."""
    if len(databases) <= 1:
        only = databases[0] if databases else None
        view = timeline
        if only is not None and only.journal_mode != timeline.journal_mode:
            view = replace(timeline, journal_mode=only.journal_mode)
        return [_about(f, only) for f in diagnose(view)]
    findings = []
    for database, view in _database_views(timeline, databases, log):
        findings += [_about(f, database) for f in diagnose(view)]
    return findings


def _about(finding: Finding, database: DatabaseInfo | None) -> Finding:
    if database is None:
        return finding
    return replace(finding, database=database.path, journal_mode=database.journal_mode)


def _database_views(
    timeline: Timeline, databases: tuple[DatabaseInfo, ...], log: DatabaseLog
) -> list[tuple[DatabaseInfo, Timeline]]:
    """One timeline per database file: its connections and what they did, in one pass over
    each kind of span. What does not name a connection stays with every file (the processes
    recorded) or goes to its own file (WAL samples and filesystems, by path)."""
    index = {conn: i for i, db in enumerate(databases) for conn in db.connections}
    paths = {db.path: i for i, db in enumerate(databases)}

    def split(spans: Any, conn_of: Any) -> list[list[Any]]:
        parts: list[list[Any]] = [[] for _ in databases]
        for span in spans:
            i = index.get(conn_of(span))
            if i is not None:
                parts[i].append(span)
        return parts

    calls = split(timeline.calls, attrgetter("actor.conn"))
    waits = split(timeline.waits, attrgetter("waiter.conn"))
    write_holds = split(timeline.write_holds, attrgetter("holder.conn"))
    read_holds = split(timeline.read_holds, attrgetter("holder.conn"))
    open_statements = split(timeline.open_statements, attrgetter("holder.conn"))
    samples = split(timeline.os_lock_samples, attrgetter("conn"))
    wal: list[list[Any]] = [[] for _ in databases]
    for sample in timeline.wal_samples:
        path = getattr(sample, "db", None) or log.wal_sample_db(sample.t) or log.recording_db
        if path in paths:
            wal[paths[path]].append(sample)
    views = []
    for i, db in enumerate(databases):
        connections = {c: timeline.connections[c] for c in db.connections}
        views.append(
            (
                db,
                replace(
                    timeline,
                    connections=connections,
                    calls=tuple(calls[i]),
                    waits=tuple(waits[i]),
                    write_holds=tuple(write_holds[i]),
                    read_holds=tuple(read_holds[i]),
                    open_statements=tuple(open_statements[i]),
                    os_lock_samples=tuple(samples[i]),
                    wal_samples=tuple(wal[i]),
                    conn_databases={
                        c: p for c, p in timeline.conn_databases.items() if c in connections
                    },
                    filesystems=tuple(f for f in timeline.filesystems if f.db == db.path),
                    journal_mode=db.journal_mode,
                    page_size=db.page_size or timeline.page_size,
                    reduced_detail=any(not c.instrumented for c in connections.values()),
                ),
            )
        )
    return views


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
    from sqlite_lockprobe.sources.inspect.oslocks import (
        process_info,  # psutil: only when there is someone
    )

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
