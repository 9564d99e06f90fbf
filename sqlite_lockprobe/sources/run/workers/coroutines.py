"""Coroutine groups: asyncio tasks on one event loop, in a thread of the lockprobe process.

With `blocking = true` (the default) a task calls sqlite3 directly on the loop, as async
endpoints that use a synchronous driver do (FastAPI + SQLAlchemy sessions, Django's async
views with DJANGO_ALLOW_ASYNC_UNSAFE): a call that waits for a lock blocks the whole loop.
With `blocking = false` each connection has its own thread and tasks await its calls, as
aiosqlite does. Every connection opened is closed on every path."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlite_lockprobe.probe.capi import Emit
from sqlite_lockprobe.sources.run.scenario import Group
from sqlite_lockprobe.sources.run.workers.program import (
    Close,
    Open,
    RunControl,
    Sleep,
    Wait,
    WorkerStats,
    worker_name,
    worker_program,
)
from sqlite_lockprobe.sources.run.workers.session import CallRun, Session

_WAIT_POLL_SECONDS = 0.005


class _Connections:
    """Where a group's sqlite calls run: on the loop, or on one thread per connection."""

    def __init__(self, blocking: bool) -> None:
        self.blocking = blocking
        self.executors: dict[int, ThreadPoolExecutor] = {}

    async def run(self, session: Session | None, fn: Any, *args: Any) -> Any:
        if self.blocking:
            return fn(*args)
        loop = asyncio.get_running_loop()
        key = id(session)
        executor = self.executors.get(key)
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockprobe-conn")
            if session is not None:  # a shared connection: this worker's thread for it
                self.executors[key] = executor
        result = await loop.run_in_executor(executor, fn, *args)
        if session is None:  # just opened: the connection keeps this thread
            self.executors[id(result)] = executor
        return result

    async def close(self, session: Session) -> None:
        await self.run(session, session.close)
        executor = self.executors.pop(id(session), None)
        if executor is not None:
            executor.shutdown(wait=False)

    def shutdown(self) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=False)
        self.executors.clear()


async def _make_calls(connections: _Connections, run: CallRun) -> tuple[int, bool]:
    """On a thread per connection each call is awaited on its own, as aiosqlite does, so
    other tasks run between the calls of one transaction. (On the loop, blocking, the worker
    program makes its runs itself: nothing awaits between the calls.)"""
    made = 0
    for i in range(len(run.calls)):
        n, ok = await connections.run(run.session, run.make, i)
        made += n
        if not ok and run.stop_on_error:
            return made, False
    return made, True


async def _run_worker(
    control: RunControl,
    group: Group,
    index: int,
    emit: Emit,
    shared: Session | None,
    ready: Any,
) -> None:
    name = worker_name(group, index)
    stats = WorkerStats()
    connections = _Connections(group.blocking)
    opened: list[Session] = []
    error = None
    emit(
        (
            "worker",
            time.monotonic_ns(),
            name,
            group.name,
            "coroutine",
            os.getpid(),
            threading.get_native_id(),
            name,
        )
    )
    try:
        first = None
        try:
            if group.connection == "per-worker":
                first = await connections.run(None, Session, control.spec(group), emit, name)
                opened.append(first)
        finally:
            ready.release()
        while not control.start_gate.is_set():
            await asyncio.sleep(_WAIT_POLL_SECONDS)
        program = worker_program(
            control, group, index, emit, shared, stats, first, task=name, direct=group.blocking
        )
        result: Any = None
        while True:
            try:
                action = program.send(result)
            except StopIteration:
                break
            if isinstance(action, CallRun):
                result = await _make_calls(connections, action)
            elif isinstance(action, Sleep):
                await asyncio.sleep(action.seconds)
                result = None
            elif isinstance(action, Wait):
                while not action.event.is_set() and time.monotonic_ns() < action.until_ns:
                    await asyncio.sleep(_WAIT_POLL_SECONDS)
                result = action.event.is_set()
            elif isinstance(action, Open):
                result = await connections.run(None, Session, control.spec(group), emit, name)
                opened.append(result)
            elif isinstance(action, Close):
                opened.remove(action.session)
                await connections.close(action.session)
                result = None
    except Exception as exc:  # a worker's crash is reported, the run goes on
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for session in opened:
            await connections.close(session)
        connections.shutdown()
        emit(("worker_end", time.monotonic_ns(), name, stats.ops, error))
        control.worker_finished(group.name)


async def _run_groups(control: RunControl, groups: list[Group], emit: Emit, ready: Any) -> None:
    shared: list[Session] = []
    tasks = []
    try:
        for group in groups:
            session = None
            if group.connection == "shared":
                session = Session(control.spec(group), emit, f"{group.name}#shared", shared=True)
                shared.append(session)
            for i in range(group.count):
                coro = _run_worker(control, group, i, emit, session, ready)
                tasks.append(asyncio.create_task(coro, name=worker_name(group, i)))
        await asyncio.gather(*tasks)
    finally:
        for session in shared:
            session.close()


class CoroutineGroups:
    """All coroutine groups of a run share one event loop, on one thread."""

    def __init__(self, control: RunControl, groups: list[Group], emit: Emit, ready: Any) -> None:
        self.groups = groups
        self.thread = threading.Thread(
            target=self._main,
            args=(control, groups, emit, ready),
            name="lockprobe-loop",
            daemon=True,
        )

    @staticmethod
    def _main(control: RunControl, groups: list[Group], emit: Emit, ready: Any) -> None:
        """Each task opens its connection, reports ready and waits for the gate itself."""
        asyncio.run(_run_groups(control, groups, emit, ready))

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> int:
        return int(self.thread.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
