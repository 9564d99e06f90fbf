"""The in-process recorder: `sqlite_lockprobe.record()` probes the sqlite3 connections a
program opens from then on, in its own process (a test, a service's debug endpoint), and
diagnoses them with the same pipeline as `lockprobe trace`, without a child process or an
event file.

It installs trace's Tracer (tracer.py) with a sink instead of an event file: an `EventRing`
that keeps the last `max_events` events and counts what it dropped. The records that name
what the others refer to (the process's `meta`, `open`, `close`, `worker`, and the keys of
short records) are kept apart, so the oldest calls can go without making the rest
unreadable. Reading back (`events`) is eventfile.decode_records, as for an event file.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any

from sqlite_lockprobe.dumps import DEFAULT_DUMP_INTERVAL, DEFAULT_DUMP_SECONDS, Dumper, dump_target
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.eventfile import TRACE_KEY, decode_records
from sqlite_lockprobe.events.records import merge_events, write_events
from sqlite_lockprobe.probe import tracer as _tracer_module
from sqlite_lockprobe.probe.tracer import TraceConfig, Tracer
from sqlite_lockprobe.sampling import SamplingTracer, sample_every

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlite_lockprobe.diagnose.analysis import Analysis

DEFAULT_MAX_EVENTS = 100_000
# The name records (see the module's docstring) of connections closed before the oldest kept
# event are let go once there are this many closed connections and workers (then twice as
# many as were left): a service opening a connection per request stays bounded too.
PRUNE_AT = 1024

_NAMES = frozenset({"meta", "open", "close", "worker", TRACE_KEY})
# What a stopped recorder's tracer records into: a deque that keeps nothing (C, no Python).
_DISCARD = SimpleNamespace(append=deque(maxlen=0).append)

_active: Recorder | None = None
_active_lock = threading.Lock()


class EventRing:
    """The tracer's sink: the last `size` events in a ring (the oldest go first, counted) and
    the name records beside it. `append` runs on every recorded call, from any thread:
    a deque's append is one C step, and so is the count (itertools.count)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring: deque[tuple[Any, ...]] = deque(maxlen=size)
        self._ring_append = self._ring.append
        self._appended = itertools.count()
        self._peeks = 0  # numbers the count gave to `snapshot`, not to events
        self._forgotten = 0  # events let go by `forget`, not dropped
        self._lock = threading.Lock()
        self._metas: dict[Any, tuple[Any, ...]] = {}  # the first; then the last per database
        self._opens: dict[str, tuple[Any, ...]] = {}
        self._closes: dict[str, tuple[Any, ...]] = {}
        self._workers: dict[str, tuple[Any, ...]] = {}
        self._keys: dict[int, tuple[Any, ...]] = {}
        self._prune_at = PRUNE_AT

    def append(self, record: tuple[Any, ...]) -> None:
        kind = record[0]
        if kind.__class__ is int or kind not in _NAMES:
            self._ring_append(record)
            next(self._appended)
        else:
            self._keep(record)

    def _keep(self, record: tuple[Any, ...]) -> None:
        with self._lock:
            kind = record[0]
            if kind == TRACE_KEY:  # (T, key, conn, worker, thread, task)
                self._keys[record[1]] = record
            elif kind == "open":  # (open, t, conn, worker, ...)
                self._opens[record[2]] = record
            elif kind == "close":
                self._closes[record[2]] = record
            elif kind == "worker":  # (worker, t, label, ...)
                self._workers[record[2]] = record
            else:  # meta: (meta, t, pid, source, db, ...)
                self._metas[record[4] if self._metas else None] = record
            if len(self._closes) + len(self._workers) > self._prune_at:
                self._prune()

    def _prune(self) -> None:
        """Let go of the names nothing kept refers to any more: connections closed before the
        oldest event in the ring was recorded (their events were all recorded before their
        close, so they are gone), their keys, and workers no kept record names."""
        ring = list(self._ring)
        oldest = _time_of(ring[0]) if ring else None
        gone = {conn for conn, close in self._closes.items() if oldest is None or close[1] < oldest}
        for conn in gone:
            self._opens.pop(conn, None)
            del self._closes[conn]
        self._keys = {k: r for k, r in self._keys.items() if r[2] not in gone}
        named = {r[3] for r in self._keys.values()} | {r[3] for r in self._opens.values()}
        named.update(r[4] for r in ring if r[0] == "call")
        self._workers = {
            label: r
            for label, r in self._workers.items()
            if label in named or (oldest is not None and r[1] >= oldest)
        }
        self._prune_at = max(PRUNE_AT, 2 * (len(self._closes) + len(self._workers)))

    def __len__(self) -> int:
        return len(self._ring)

    def forget(self) -> None:
        """Let go of the events kept so far (not counted as dropped) and of the names of the
        connections already closed (nothing kept refers to them any more); open connections
        and workers stay named. Appends from other threads meanwhile go on: only the oldest
        are popped, and a close waits for the lock."""
        with self._lock:
            popleft = self._ring.popleft
            count = len(self._ring)
            for _ in range(count):
                popleft()
            self._forgotten += count
            for conn in self._closes:
                self._opens.pop(conn, None)
            gone = set(self._closes)
            self._closes.clear()
            self._keys = {k: r for k, r in self._keys.items() if r[2] not in gone}

    def snapshot(self) -> tuple[list[tuple[Any, ...]], int]:
        """(every record kept, names first, then the ring in the order recorded; how many
        events the ring dropped). Exact once recording stopped; while it goes on, events
        recorded meanwhile may count as dropped."""
        with self._lock:
            ring = list(self._ring)  # one C step: no append comes in between
            appended = next(self._appended) - self._peeks - self._forgotten
            self._peeks += 1
            names = [
                *self._metas.values(),
                *self._workers.values(),
                *self._keys.values(),
                *self._opens.values(),
                *self._closes.values(),
            ]
        return names + ring, max(0, appended - len(ring))


class WatchedRing(EventRing):
    """An EventRing that also tells `on_give_up` when a busy handler gives up (its `busy`
    event's delay is 0: the call fails with SQLITE_BUSY). Runs inside the busy handler."""

    def __init__(self, size: int, on_give_up: Callable[[], None]) -> None:
        super().__init__(size)
        self._on_give_up = on_give_up

    def append(self, record: tuple[Any, ...]) -> None:
        super().append(record)
        if record[0] == "busy" and record[4] <= 0:
            self._on_give_up()


def _time_of(record: tuple[Any, ...]) -> int:
    """When a recorded event started: a short record's first field, else the one after the
    kind."""
    first = record[0]
    return first if first.__class__ is int else record[1]


class Recorder:
    """Records what this process's sqlite3 connections do, from `start()` to `stop()`, and
    diagnoses it like `lockprobe trace`. Only connections opened after `start()` are probed;
    one recorder at a time per process (see docs/api.md)."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        *,
        sample: float = 1.0,
        dump_on_locked: str | os.PathLike[str] | None = None,
        dump_seconds: float = DEFAULT_DUMP_SECONDS,
        dump_interval: float = DEFAULT_DUMP_INTERVAL,
        dump_signal: int | None = None,
    ) -> None:
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise LockprobeError(f"max_events must be a whole number >= 1, not {max_events!r}")
        self.db = os.path.realpath(os.fspath(db)) if db is not None else None
        self.max_events = max_events
        self.sample = sample
        self._every = sample_every(sample)
        for name, value in (("dump_seconds", dump_seconds), ("dump_interval", dump_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise LockprobeError(f"{name} must be a number of seconds >= 0, not {value!r}")
        self._dump_target = dump_target(dump_on_locked) if dump_on_locked is not None else None
        if dump_signal is not None and (
            self._dump_target is None or not hasattr(signal, "pthread_kill")
        ):
            raise LockprobeError(
                "dump_signal needs dump_on_locked (where dumps go) and a Unix signal"
            )
        self.dump_seconds = float(dump_seconds)
        self.dump_interval = float(dump_interval)
        self.dump_signal = dump_signal
        self._dumper: Dumper | None = None
        self._old_handler: Any = None
        self._ring = (
            EventRing(max_events)
            if self._dump_target is None
            else WatchedRing(max_events, self._locked)
        )
        self._tracer: Tracer | None = None
        self._stopped = False

    @property
    def active(self) -> bool:
        return self._tracer is not None and not self._stopped

    def start(self) -> Recorder:
        """Patch sqlite3.connect in this process; returns self."""
        global _active
        import sqlite3

        with _active_lock:
            if self._tracer is not None:
                raise LockprobeError("this recorder was started already: make a new one")
            if _active is not None:
                raise LockprobeError(
                    "a lockprobe recorder is already recording in this process: stop it "
                    "first (recorders do not nest)"
                )
            traced = _tracer_module._tracer
            if traced is not None and traced._original_connect is not None:
                raise LockprobeError(
                    "this process runs under `lockprobe trace`, which records it already"
                )
            config = TraceConfig(
                "",
                db=self.db,
                command=shlex.join(sys.argv) if sys.argv and sys.argv[0] else "",
                parent_pid=os.getppid(),
                source="record",
            )
            if self._every == 1:
                tracer = Tracer(config, sink=self._ring)
            else:
                tracer = SamplingTracer(config, self._ring, self._every)
            if self.dump_signal is not None:
                self._old_handler = signal.signal(self.dump_signal, self._signalled)
            if self._dump_target is not None:
                self._dumper = Dumper(
                    self, self._dump_target, self.dump_seconds, self.dump_interval
                )
            tracer.install(sqlite3, process_hooks=False)
            self._tracer = tracer
            _active = self
        return self

    def _locked(self) -> None:
        dumper = self._dumper
        if dumper is not None and not self._stopped:
            dumper.locked()

    def _signalled(self, signum: int, frame: Any) -> None:
        dumper = self._dumper
        if dumper is not None:
            dumper.signalled()

    @property
    def dumps(self) -> list[str]:
        """The files dump_on_locked and dump_signal wrote so far, oldest first."""
        return [str(p) for p in self._dumper.paths] if self._dumper else []

    @property
    def dumps_skipped(self) -> int:
        """Give-ups that wrote no dump: within dump_interval of the last one."""
        return self._dumper.skipped if self._dumper else 0

    def settle_dumps(self) -> None:
        """Return once every dump asked for so far is written (or skipped)."""
        if self._dumper is not None:
            self._dumper.settle()

    def stop(self) -> None:
        """Restore sqlite3.connect. Connections opened meanwhile stay instrumented (their
        class cannot change) but record nothing more. Stopping twice is harmless."""
        global _active
        with _active_lock:
            tracer = self._tracer
            if tracer is None or self._stopped:
                return
            tracer.uninstall()
            tracer.record_into(_DISCARD)
            self._stopped = True
            if self.dump_signal is not None:
                # None: a handler not set from Python; the default is the nearest we can give.
                old = self._old_handler
                signal.signal(self.dump_signal, signal.SIG_DFL if old is None else old)
            if self._dumper is not None:
                self._dumper.stop()
            if _active is self:
                _active = None

    def __enter__(self) -> Recorder:
        if self._tracer is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def dropped(self) -> int:
        """Events the ring dropped (the oldest) because more than max_events were recorded."""
        return self._ring.snapshot()[1]

    @property
    def kept(self) -> int:
        """How many events the ring holds now (the name records aside)."""
        return len(self._ring)

    def forget(self) -> None:
        """Let go of the events kept so far, not counted as dropped: what comes next is
        diagnosed on its own (the pytest plugin, test by test). The connections still open,
        and the threads and tasks already named, stay known."""
        self._ring.forget()

    def events(self) -> list[dict[str, Any]]:
        """The events kept, as event dicts in time order (what a saved log holds)."""
        return self._events()[0]

    def _events(self, seconds: float | None = None) -> tuple[list[dict[str, Any]], int]:
        records, dropped = self._ring.snapshot()
        if seconds is not None:
            since = time.monotonic_ns() - int(seconds * 1e9)
            records = [r for r in records if r[0] in _NAMES or _time_of(r) >= since]
        return merge_events([decode_records(records)]), dropped

    def analysis(self) -> Analysis:
        """The events kept, diagnosed: the Analysis the CLI renders. When the ring dropped
        events, its summary says so in a note."""
        from sqlite_lockprobe.diagnose.analysis import analyze  # not needed until asked

        events, dropped = self._events()
        analysis = analyze(events)
        notes = analysis.summary.notes
        if dropped:
            notes = (*notes, dropped_note(dropped, self.max_events))
        tracer = self._tracer
        if isinstance(tracer, SamplingTracer) and tracer.unsampled:
            notes = (*notes, sampled_note(tracer.sampled, tracer.unsampled))
        if notes is analysis.summary.notes:
            return analysis
        return replace(analysis, summary=replace(analysis.summary, notes=notes))

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the events kept as a JSONL log (`lockprobe report PATH` reads it); returns
        how many events it holds."""
        return write_events(path, self.events())

    def dump(self, path: str | os.PathLike[str], seconds: float | None = None) -> int:
        """`save()` the events of the last `seconds` only (all kept ones when None), with the
        name records they need; returns how many events the file holds."""
        return write_events(path, self._events(seconds)[0])


def dropped_note(dropped: int, kept: int) -> str:
    return (
        f"{dropped:,} event{'s' if dropped != 1 else ''} dropped: the recorder keeps the last "
        f"{kept:,} (max_events), so what came before them is not in this diagnosis"
    )


def sampled_note(sampled: int, unsampled: int) -> str:
    return (
        f"sampled: {sampled:,} of {sampled + unsampled:,} connections recorded call by call; "
        f"the other {unsampled:,} only their waits and give-ups (no calls, transactions or "
        "SQLITE_LOCKED errors), so a clean result covers the sampled connections alone"
    )


def install(
    db: str | os.PathLike[str] | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    **options: Any,
) -> Recorder:
    """Start recording this process's sqlite3 connections (those to `db` alone if given),
    keeping the last `max_events` events; `Recorder.stop()` ends it. `options`: sample,
    dump_on_locked, dump_seconds, dump_interval, dump_signal (docs/api.md). Raises
    LockprobeError when a recorder is already recording here."""
    return Recorder(db, max_events, **options).start()


def record(
    db: str | os.PathLike[str] | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    **options: Any,
) -> Recorder:
    """`install()`, for a with-statement: recording stops when the block ends."""
    return install(db, max_events, **options)
