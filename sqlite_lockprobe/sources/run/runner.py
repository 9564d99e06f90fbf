"""Run a scenario: prepare the database, start every group behind one start gate, wait for
them (or for Ctrl-C or the time limit), and merge every process's events by time."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.eventfile import FILE_SUFFIX, EventFile, read_event_file
from sqlite_lockprobe.events.records import event_time, merge_events
from sqlite_lockprobe.probe.gctuning import fewer_collections
from sqlite_lockprobe.sources.inspect.filesystems import filesystem_event
from sqlite_lockprobe.sources.run.preparation import copy_database, prepare_database
from sqlite_lockprobe.sources.run.scenario import Scenario, event_names
from sqlite_lockprobe.sources.run.walsampler import WalSampler
from sqlite_lockprobe.sources.run.workers.coroutines import CoroutineGroups
from sqlite_lockprobe.sources.run.workers.processes import SPAWN, ProcessGroup
from sqlite_lockprobe.sources.run.workers.program import RunControl
from sqlite_lockprobe.sources.run.workers.threads import ThreadGroup

# Time for every worker (spawned processes import first) to open its connection and report
# ready before the run is abandoned.
_READY_SECONDS = 60.0
# Grace after the scenario's max_seconds before stuck workers are given up on.
_JOIN_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Progress:
    elapsed: float
    workers_running: int
    events: int  # recorded in this process so far (worker processes keep their own)


@dataclass
class RunResult:
    """What a run produced: the merged events and how the run went."""

    scenario: Scenario
    db_path: str
    db_note: str
    events: list[dict[str, Any]]
    wall_seconds: float
    interrupted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    process_exit_codes: dict[str, int | None] = field(default_factory=dict)


def run_scenario(
    scenario: Scenario,
    db: str | os.PathLike[str] | None = None,
    instrument: bool = True,
    progress: Callable[[Progress], None] | None = None,
    wait_limit_s: float | None = None,
    on_prepared: Callable[[Path], None] | None = None,
) -> RunResult:
    """Run `scenario` on a fresh temporary database, or on `db`: a new file is created there;
    an existing database is never touched: the run works on a copy made with the backup API.
    `wait_limit_s` bounds every `wait` step (it then goes on instead of stopping).
    `on_prepared(path)` is called once the database is ready and before any worker starts:
    the moment to attach another program to the file the run uses (tests start outside lock
    holders there)."""
    workdir = Path(tempfile.mkdtemp(prefix="lockprobe-"))
    try:
        db_path, note = _choose_database(db, workdir)
        settings = prepare_database(scenario, db_path)
        if on_prepared is not None:
            on_prepared(db_path)
        # Where the database lives: the file the run uses, and the user's --db when the run
        # works on a copy of it (its filesystem is the one the application would meet).
        places = [db_path] + ([Path(db)] if db is not None and Path(db) != db_path else [])
        return _execute(
            scenario, db_path, note, settings, workdir, instrument, progress, wait_limit_s, places
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _choose_database(db: str | os.PathLike[str] | None, workdir: Path) -> tuple[Path, str]:
    if db is None:
        return workdir / "lockprobe.db", "a fresh temporary database (removed after the run)"
    path = Path(db)
    if path.is_dir():
        raise LockprobeError(f"{path}: is a directory, not a database file")
    if path.exists():
        if not path.is_file():
            raise LockprobeError(f"{path}: not a regular file")
        copy = workdir / path.name
        copy_database(path, copy)
        return copy, f"a copy of {path} (the original was not modified)"
    if not path.parent.exists():
        raise LockprobeError(f"{path}: directory {path.parent} does not exist")
    for suffix in ("-wal", "-journal"):
        leftover = Path(f"{path}{suffix}")
        if leftover.exists():
            # SQLite would take a leftover journal or WAL as the new database's own and
            # replay or roll it back into it.
            raise LockprobeError(
                f"{path}: no database there, but {leftover.name} is: it belongs to a database "
                "that was moved or deleted; refusing to create a new one beside it"
            )
    return path, f"{path} (created for this run)"


def _execute(
    scenario: Scenario,
    db_path: Path,
    note: str,
    settings: dict[str, Any],
    workdir: Path,
    instrument: bool,
    progress: Callable[[Progress], None] | None,
    wait_limit_s: float | None,
    places: list[Path],
) -> RunResult:
    event_dir = workdir / "events"
    event_dir.mkdir()
    # This process's events (thread and coroutine groups, WAL samples) go to a file as the run
    # goes, like each worker process's: memory stays flat, and the hot path reuses it.
    recorder = EventFile(event_dir / f"lockprobe{FILE_SUFFIX}")
    recorder.start_flusher()
    try:
        process_groups, wall, interrupted = _drive(
            scenario,
            db_path,
            settings,
            event_dir,
            instrument,
            progress,
            wait_limit_s,
            places,
            recorder,
        )
    finally:
        recorder.close()  # written and closed whatever happened: the run's files go next
    own = read_event_file(recorder.path)
    streams = [own] + [read_event_file(f) for p in process_groups for f in p.existing_event_files()]
    events = merge_events(streams)
    killed = [k for p in process_groups for k in p.killed()]
    if killed:
        events = merge_events([events, _deaths(events, killed)])
    exit_codes = {k: v for p in process_groups for k, v in p.exit_codes().items()}
    return RunResult(
        scenario=scenario,
        db_path=str(db_path),
        db_note=note,
        events=events,
        wall_seconds=wall,
        interrupted=interrupted,
        settings=settings,
        process_exit_codes=exit_codes,
    )


def _drive(
    scenario: Scenario,
    db_path: Path,
    settings: dict[str, Any],
    event_dir: Path,
    instrument: bool,
    progress: Callable[[Progress], None] | None,
    wait_limit_s: float | None,
    places: list[Path],
    recorder: EventFile,
) -> tuple[list[ProcessGroup], float, bool]:
    """Start every group, open the start gate, wait for the end (or Ctrl-C, or the time
    limit) and stop what is left. Returns the process groups (their event files and exit
    codes), the wall time and whether the run was interrupted."""
    emit = recorder.append
    emit(
        (
            "meta",
            time.monotonic_ns(),
            os.getpid(),
            f"run {scenario.name}",
            str(db_path),
            settings["journal_mode"],
            settings["page_size"],
            settings["wal_autocheckpoint"],
            platform.python_version(),
            sqlite3.sqlite_version,
            sys.platform,
            None,
            scenario.database.synchronous,
        )
    )
    for place in places:
        emit(filesystem_event(str(place)))
    control = RunControl(
        scenario=scenario,
        db_path=str(db_path),
        instrument=instrument,
        events={name: SPAWN.Event() for name in event_names(scenario)},
        start_gate=SPAWN.Event(),
        start_ns=SPAWN.Value("q", 0),
        stop=SPAWN.Event(),
        stop_flag=SPAWN.RawValue("b", 0),
        remaining={g.name: SPAWN.Value("i", g.count) for g in scenario.groups},
        wait_limit_s=wait_limit_s,
    )
    ready = SPAWN.Semaphore(0)
    process_groups = [
        ProcessGroup(control, g, event_dir, ready) for g in scenario.groups if g.kind == "process"
    ]
    thread_groups = [
        ThreadGroup(control, g, emit, ready) for g in scenario.groups if g.kind == "thread"
    ]
    coroutine_groups = [g for g in scenario.groups if g.kind == "coroutine"]
    loop_groups = (
        [CoroutineGroups(control, coroutine_groups, emit, ready)] if coroutine_groups else []
    )
    runners: list[Any] = [*process_groups, *thread_groups, *loop_groups]
    sampler = WalSampler(db_path, emit) if settings["journal_mode"] == "wal" else None

    interrupted = False
    started = time.monotonic()
    with fewer_collections():
        try:
            for group in runners:
                group.start()
            _wait_until_ready(ready, sum(g.count for g in scenario.groups), runners, control)
            # Everyone is at the gate: start together, a little ahead so all see the same start.
            control.start_ns.value = time.monotonic_ns() + 20_000_000
            control.start_gate.set()
            if sampler:
                sampler.start()
            limit = started + scenario.max_seconds + _JOIN_GRACE_SECONDS
            while any(r.alive() for r in runners):
                if time.monotonic() > limit:
                    control.request_stop()
                    break
                for r in runners:
                    r.join(0.1)
                if progress:
                    alive = sum(r.alive() for r in runners)
                    progress(Progress(time.monotonic() - started, alive, recorder.recorded))
        except KeyboardInterrupt:
            interrupted = True
            control.request_stop()
        finally:
            control.start_gate.set()
            for r in runners:
                r.join(_JOIN_GRACE_SECONDS if not interrupted else 2.0)
            for p in process_groups:
                p.terminate()
            if sampler:
                # A worker thread still finishing a busy wait has its connection open: then
                # -shm stays open until this process exits (see WalSampler).
                in_process = [r for r in runners if not isinstance(r, ProcessGroup)]
                sampler.stop(close=not any(r.alive() for r in in_process))
    wall = time.monotonic() - started
    return process_groups, wall, interrupted


def _deaths(
    events: list[dict[str, Any]], killed: list[tuple[str, int | None, str]]
) -> list[dict[str, Any]]:
    """A worker_end event for each worker process a signal ended (it could not write its
    own), at the time of the last event it recorded."""
    conns_of: dict[str, set[str]] = {}
    for e in events:
        if e["k"] == "open":
            conns_of.setdefault(e["worker"], set()).add(e["conn"])
    deaths = []
    for worker, pid, signame in killed:
        mine = conns_of.get(worker, set())
        last = max(
            (event_time(e) for e in events if e.get("worker") == worker or e.get("conn") in mine),
            default=0,
        )
        error = f"killed by {signame} (pid {pid})"
        deaths.append({"k": "worker_end", "t": last, "worker": worker, "ops": None, "error": error})
    return deaths


def _wait_until_ready(ready: Any, expected: int, runners: list[Any], control: RunControl) -> None:
    """Every worker has opened its connection and waits at the gate (a worker that failed to
    open reports ready too: it ends at once and the report shows why)."""
    deadline = time.monotonic() + _READY_SECONDS
    for _ in range(expected):
        while not ready.acquire(timeout=0.2):
            died = any(
                p.exitcode is not None
                for r in runners
                if isinstance(r, ProcessGroup)
                for p in r.processes
            )
            if time.monotonic() > deadline or died or not any(r.alive() for r in runners):
                control.request_stop()
                for r in runners:
                    if isinstance(r, ProcessGroup):
                        r.terminate()
                raise LockprobeError("workers failed to start (no report from some of them)")
