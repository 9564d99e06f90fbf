"""What one worker does, written once for all worker kinds.

`worker_program` is a generator that yields the actions it needs performed (open a
connection, a sqlite call, a sleep, a wait) and receives their results. The thread and
process drivers perform them synchronously; the coroutine driver awaits them, on the event
loop or on a thread per connection. So the step logic has one implementation.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlite_lockprobe.probe.capi import Emit
from sqlite_lockprobe.sources.run.scenario import SQL_ACTIONS, Group, Scenario, Step
from sqlite_lockprobe.sources.run.workers.session import CallRun, ConnectionSpec, Session


@dataclass
class RunControl:
    """What every worker of a run shares, across threads and processes: the signal events
    (multiprocessing events, so they work everywhere), the start gate and start time, the
    stop flag (Ctrl-C, time limit) and the per-group count of workers still running."""

    scenario: Scenario
    db_path: str
    instrument: bool
    events: dict[str, Any]
    start_gate: Any
    start_ns: Any
    stop: Any
    stop_flag: Any
    remaining: dict[str, Any]
    wait_limit_s: float | None = None

    def request_stop(self) -> None:
        self.stop_flag.value = 1
        self.stop.set()

    def deadline_ns(self) -> int:
        return int(self.start_ns.value + self.scenario.max_seconds * 1e9)

    def spec(self, group: Group) -> ConnectionSpec:
        return ConnectionSpec(
            db_path=self.db_path,
            group=group.name,
            timeout_ms=self.scenario.group_timeout_ms(group),
            transaction_mode=self.scenario.group_transaction_mode(group),
            journal_mode=self.scenario.database.journal_mode,
            synchronous=self.scenario.database.synchronous,
            wal_autocheckpoint=self.scenario.database.wal_autocheckpoint,
            instrument=self.instrument,
            shared_cache=self.scenario.database.shared_cache,
        )

    def worker_finished(self, group: str) -> None:
        counter = self.remaining[group]
        with counter.get_lock():
            counter.value -= 1
            last = counter.value == 0
        if last:
            self.events[f"done:{group}"].set()


# ---- actions a program yields


@dataclass(frozen=True)
class Open:
    pass


class SqlCall(NamedTuple):
    """One call a step makes: the operation, its SQL, and whether it binds the parameters."""

    op: str
    sql: str
    with_params: bool


CLOSE_READS = SqlCall("close_reads", "", False)
ROLLBACK = SqlCall("rollback", "ROLLBACK", False)


class Prepared(NamedTuple):
    """A worker's steps for one session: each run of consecutive SQL steps is a CallRun, made
    again on every pass. The program makes it itself (`direct`), or yields it as one action
    to a driver that awaits its calls and answers (calls made, whether the run went through):
    the trip through the driver was a third of the engine's own cost per call."""

    session: Session
    steps: tuple[CallRun | Step, ...]
    close_reads: CallRun
    rollback: CallRun

    @classmethod
    def of(
        cls,
        plan: tuple[Segment, ...],
        session: Session,
        worker: str,
        task: str | None,
        params: Any,
        group: Group,
    ) -> Prepared:
        stop_on_error = group.on_error != "continue"
        return cls(
            session,
            tuple(
                session.prepare(worker, task, segment, params, stop_on_error)
                if isinstance(segment, tuple)
                else segment
                for segment in plan
            ),
            session.prepare(worker, task, (CLOSE_READS,), (), True),
            session.prepare(worker, task, (ROLLBACK,), (), True),
        )


@dataclass(frozen=True)
class Close:
    session: Session


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Wait:
    event: Any
    until_ns: int


@dataclass(frozen=True)
class Crash:
    """Die at once (SIGKILL), as a crashed or OOM-killed worker process would."""


Action = Open | CallRun | Close | Sleep | Wait | Crash
# What a group's steps compile to: runs of consecutive SQL calls, and the other steps.
Segment = tuple[SqlCall, ...] | Step


@dataclass
class WorkerStats:
    ops: int = 0


def worker_name(group: Group, index: int) -> str:
    return f"{group.name}#{index}"


def worker_program(
    control: RunControl,
    group: Group,
    index: int,
    emit: Emit,
    shared: Session | None,
    stats: WorkerStats,
    first: Session | None = None,
    task: str | None = None,
    direct: bool = False,
) -> Generator[Action, Any, None]:
    """The steps of one worker, iteration after iteration, as actions to perform. Sessions it
    opens it closes at its end, and `first` (its per-worker connection, opened before the
    start gate); a driver that stops early closes what is left open. `task` is the asyncio
    task's name the calls are recorded with (None for threads and processes). With `direct`
    the program makes its runs of calls itself, on the driver's thread: for drivers that
    would make them at once anyway (not awaited), it saves a trip through the driver."""
    name = worker_name(group, index)
    begin_at = control.start_ns.value + int((group.start_after + group.stagger * index) * 1e9)
    delay = (begin_at - time.monotonic_ns()) / 1e9
    if delay > 0:
        yield Sleep(delay)
    deadline = control.deadline_ns()
    run_until = deadline
    if group.duration is not None:
        run_until = min(deadline, time.monotonic_ns() + int(group.duration * 1e9))
    session = shared if shared is not None else first
    plan = _compiled(group)
    params = {"worker": index, "group": group.name, "pid": os.getpid(), "iteration": 0}
    prepared: Prepared | None = None
    # The pass loop is the engine's hot path with the calls themselves: what it looks up
    # every pass is held in locals, and runs of calls are yielded from here, not from a
    # generator made per pass. stop_flag is checked before each step: a shared byte read
    # without a lock (a multiprocessing Event's is_set() takes a process-shared lock: it cost
    # a fifth of a busy worker's time); the `stop` event itself wakes sleeps and waits.
    stop_flag, clock = control.stop_flag, time.monotonic_ns
    repeat = group.repeat if group.repeat is not None else sys.maxsize
    per_iteration = group.connection == "per-iteration" and shared is None
    iteration = 0
    while not stop_flag.value and clock() < run_until and iteration < repeat:
        params["iteration"] = iteration
        if session is None:
            session = yield Open()
        if prepared is None or prepared.session is not session:
            prepared = Prepared.of(plan, session, name, task, params, group)
        stop_worker = False
        for step in prepared.steps:
            if stop_flag.value:
                stop_worker = True
                break
            if isinstance(step, CallRun):
                made, ok = step.make() if direct else (yield step)
                stats.ops += made
                if not ok:
                    stop_worker = yield from _refused(group, prepared, stats, direct)
                    break
            elif (yield from _other_step(control, step, session, name, deadline, emit)):
                stop_worker = True
                break
        if session.open_reads:  # open_read cursors last until close_reads or the pass's end
            run = prepared.close_reads
            made, _ = run.make() if direct else (yield run)
            stats.ops += made
        iteration += 1
        if per_iteration:
            yield Close(session)
            session = None
        if stop_worker:
            break
    if session is not None and session is not shared:
        yield Close(session)


def _refused(
    group: Group, prepared: Prepared, stats: WorkerStats, direct: bool
) -> Generator[Action, Any, bool]:
    """After a refused call (on_error = continue goes on without stopping the run): roll
    back and go to the next pass, or stop. Returns True when the worker should stop."""
    if group.on_error != "rollback":
        return True  # on_error = "stop"
    if prepared.session.in_transaction:
        made, _ = prepared.rollback.make() if direct else (yield prepared.rollback)
        stats.ops += made
    return False


def _other_step(
    control: RunControl,
    step: Step,
    session: Session,
    name: str,
    deadline: int,
    emit: Emit,
) -> Generator[Action, Any, bool]:
    """A step that makes no sqlite call. Returns True when the worker should stop."""
    action = step.action
    event = control.events[step.event] if step.event is not None else None
    if action == "sleep":
        t0 = time.monotonic_ns()
        yield Sleep(step.seconds or 0.0)
        emit(("idle", t0, time.monotonic_ns(), name, session.conn_id, step.describe()))
    elif action == "signal":
        assert event is not None  # the scenario's validation requires it
        event.set()
    elif action == "crash":
        yield Crash()
    elif action == "wait":
        t0 = time.monotonic_ns()
        until = deadline
        if control.wait_limit_s is not None:
            until = min(deadline, t0 + int(control.wait_limit_s * 1e9))
        assert event is not None
        arrived = yield Wait(event, until)
        emit(("idle", t0, time.monotonic_ns(), name, session.conn_id, step.describe()))
        if not arrived and control.wait_limit_s is None:
            return True  # the run's time limit ended the wait
        if not arrived:
            # A bounded wait gave up: this handshake cannot happen under these settings.
            # Set the event so no other worker waits for it again.
            event.set()
    return False


def _compiled(group: Group) -> tuple[Segment, ...]:
    """The group's steps with consecutive SQL steps joined into runs of calls, worked out
    once per worker, not per pass."""
    segments: list[Segment] = []
    run: list[SqlCall] = []
    for step in group.steps:
        call = _sql_call(step)
        if call is not None:
            run.append(call)
            continue
        if run:
            segments.append(tuple(run))
            run = []
        segments.append(step)
    if run:
        segments.append(tuple(run))
    return tuple(segments)


def _sql_call(step: Step) -> SqlCall | None:
    """The call a step makes, or None for the steps that make none (sleep, wait...)."""
    action = step.action
    if action == "begin":
        return SqlCall("begin", f"BEGIN {step.mode.upper()}" if step.mode else "BEGIN", False)
    if action in ("commit", "rollback"):
        return SqlCall(action, action.upper(), False)
    if action == "close_reads":
        return CLOSE_READS
    if action in SQL_ACTIONS:
        return SqlCall(action, step.sql or "", True)
    return None


def open_first_connection(
    control: RunControl, group: Group, name: str, emit: Emit
) -> Session | None:
    """A per-worker connection, opened before the start gate (as a pool would have it)."""
    if group.connection != "per-worker":
        return None
    return Session(control.spec(group), emit, name)


# ---- the synchronous driver (threads and processes)


def run_worker_sync(
    control: RunControl,
    group: Group,
    index: int,
    emit: Emit,
    shared: Session | None,
    kind: str,
    ready: Any,
    before_crash: Callable[[], None] | None = None,
) -> None:
    """Run one worker to its end on the current thread, recording its start and end. Its
    per-worker connection is opened first, then it reports ready and waits at the start gate:
    when a connection opens is never a race with other workers' locks."""
    name = worker_name(group, index)
    stats = WorkerStats()
    error = None
    opened: list[Session] = []
    thread = threading.get_native_id()
    emit(("worker", time.monotonic_ns(), name, group.name, kind, os.getpid(), thread, None))
    try:
        try:
            first = open_first_connection(control, group, name, emit)
            if first is not None:
                opened.append(first)
        finally:
            ready.release()
        control.start_gate.wait()
        program = worker_program(control, group, index, emit, shared, stats, first, direct=True)
        result: Any = None
        while True:
            try:
                action = program.send(result)
            except StopIteration:
                break
            if isinstance(action, Sleep):
                control.stop.wait(action.seconds)
                result = None
            elif isinstance(action, Wait):
                timeout = max(0.0, (action.until_ns - time.monotonic_ns()) / 1e9)
                result = action.event.wait(timeout)
            elif isinstance(action, Open):
                result = Session(control.spec(group), emit, name)
                opened.append(result)
            elif isinstance(action, Close):
                opened.remove(action.session)
                action.session.close()
                result = None
            elif isinstance(action, Crash):
                if before_crash is not None:
                    before_crash()  # what was recorded so far survives, as with a periodic flush
                os.kill(os.getpid(), signal.SIGKILL)
    except Exception as exc:  # a worker's crash is reported, the run goes on
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for session in opened:
            session.close()
        emit(("worker_end", time.monotonic_ns(), name, stats.ops, error))
        control.worker_finished(group.name)
