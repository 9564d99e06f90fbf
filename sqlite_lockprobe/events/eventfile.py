"""The event file of one process (a traced program's, or one of a run's): the recording
appends event tuples to a list, a background thread writes them every FLUSH_SECONDS as one
chunk (8-byte length, then `marshal.dumps(list_of_tuples)`), and lockprobe reads every
process's file back as event dicts.

marshal costs 0.6 to 1.1 us per event where JSON cost 5.7 (benchmarks/bench_scale.py), and
the flusher shares the GIL with the workload it records; version 4 is read by every Python
since 3.4, so lockprobe reads what any supported child wrote. Writing as it goes also keeps a
long run's memory flat. Standard library only (it runs in the traced program).
"""

from __future__ import annotations

import _thread
import contextlib
import marshal
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlite_lockprobe.events.schema import SCHEMA, Schema

FLUSH_SECONDS = 0.25
FILE_PREFIX = "events-"
FILE_SUFFIX = ".lpk"
MARSHAL_VERSION = 4
# The run engine's calls that went through are recorded in short and read back as the same
# `call` events: recording is most of what a run costs per call beyond SQLite's own work, and
# marshal's cost is per field. `key` names the connection, worker, thread, task, op and SQL,
# and whether the connection is probed, given once by
# (CALL_KEY, key, conn, worker, thread, task, op, sql, probed). The short records are tuples
# that start with an int (t0), not a kind:
# - (t0, t1 - t0, key, in_txn): without the probe, no statements and busy None; with it, the
#   one statement was the call's own SQL (read back as that text, not the trace's copy with
#   the parameter values expanded) and there was no busy wait;
# - (t0, t1 - t0, key, in_txn, busy, stmts): any other call (stmts None: its own SQL alone).
# (Packing them with struct instead cost the worker more than it saved the flusher.)
CALL_KEY = "K"
# A traced program's calls that went through are recorded in short too (tracer.py): 7 fields,
# (t0, t1, key + op, sql, stmts, in_txn, site), the key given once by
# (TRACE_KEY, key, conn, worker, thread, task) and the op in the key's low OP_BITS bits.
TRACE_KEY = "T"
TRACE_OPS = ("execute", "executemany", "executescript", "commit", "rollback")
TRACE_OP_BITS = 3
# The compiled probe keeps those short records in C and writes each batch of them as a packed
# chunk: PACKED_MAGIC, u32 count, u32 n, then n bytes of marshal (a list: each object of the
# records once), then `count` records of i64 t0, i64 t1 and five u32 indexes into that list
# (key + op, sql, stmts, in_txn, site), little-endian. A marshal chunk never starts with "L".
PACKED_MAGIC = b"LPK1"
_PACKED_HEAD = struct.Struct("<4sII")
_PACKED_RECORD = struct.Struct("<qq5I")


class EventFile:
    """This process's event file, and the background thread that flushes it.

    Events are appended to a list (list.append is one C-level step: thread-safe) and taken
    in one slice by the flusher (a popleft per event cost more than marshal), every
    FLUSH_SECONDS as one chunk: 8-byte length, then `marshal.dumps(list_of_tuples)`. A
    process killed mid-write leaves at most a torn last chunk, which the reader skips.

    The flusher is a bare `_thread` thread: it is not in `threading.enumerate()` or
    `active_count()`, so the program sees the same threads as untraced. `tick`, when set, runs
    on it before each flush and once more when it stops (exit, fork): periodic sampling
    (trace's WAL samples, tracewal.py) without a thread of its own."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.path, flags, 0o600)
        self.pending: list[tuple[Any, ...]] = []
        self.append = self.pending.append
        self._lock = _thread.allocate_lock()
        self._running: tuple[Any, Any] | None = None  # (stop, stopped) locks of the flusher
        self.tick: Callable[[], None] | None = None
        # Set by the compiled probe (its pack_records): pending may then hold buffers of short
        # records, each written as one packed chunk (see PACKED_MAGIC).
        self.pack: Callable[[Any], bytes] | None = None
        self.written = 0

    @classmethod
    def in_directory(cls, directory: str) -> EventFile:
        """A new file in `directory` named after this process (exec keeps the pid: the time
        makes the name unique)."""
        name = f"{FILE_PREFIX}{os.getpid()}-{time.monotonic_ns()}{FILE_SUFFIX}"
        return cls(os.path.join(directory, name))

    @property
    def recorded(self) -> int:
        """How many events were appended so far, written or not (a buffer of records counts
        as its records: its len)."""
        return self.written + _count(self.pending)

    def start_flusher(self) -> None:
        if self._running is not None:
            return
        stop, stopped = _thread.allocate_lock(), _thread.allocate_lock()
        stop.acquire()
        stopped.acquire()
        self._running = (stop, stopped)
        _thread.start_new_thread(self._loop, (stop, stopped))

    def stop_flusher(self) -> bool:
        """Stop the flusher (before fork, at exit); returns whether it was running."""
        running, self._running = self._running, None
        if running is None:
            return False
        stop, stopped = running
        stop.release()
        stopped.acquire()  # it has finished its last flush
        return True

    def _loop(self, stop: Any, stopped: Any) -> None:
        try:
            while not stop.acquire(timeout=FLUSH_SECONDS):
                self._tick()
                self.flush()
            self._tick()  # the state at exit or fork: whoever stopped the flusher writes it
        finally:
            stopped.release()

    def _tick(self) -> None:
        tick = self.tick
        if tick is not None:
            with contextlib.suppress(Exception):  # a sampling problem must not stop the flushes
                tick()

    def flush(self, timeout: float = -1) -> None:
        """Write the pending events (waiting at most `timeout` seconds for another flush to
        end: a signal handler may have interrupted one in its own thread)."""
        if not self._lock.acquire(timeout=timeout):
            return
        try:
            self._flush_locked()
        finally:
            self._lock.release()

    def _flush_locked(self) -> None:
        # Only this method removes events, under the lock, and appends only add at the
        # end: the first `count` events stay put between these two C-level operations,
        # whatever other threads append meanwhile.
        pending = self.pending
        count = len(pending)
        batch = pending[:count]
        del pending[:count]
        if not batch or self.fd < 0:
            return
        if self.pack is None:
            self.written += len(batch)
            payloads = [marshal.dumps(batch, MARSHAL_VERSION)]
        else:  # few items: mostly buffers of records
            self.written += _count(batch)
            payloads = self._packed(batch, self.pack)
        chunk = b"".join(len(data).to_bytes(8, "little") + data for data in payloads)
        # The trace directory may be gone (lockprobe killed): the program goes on.
        with contextlib.suppress(OSError):
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view) :]

    @staticmethod
    def _packed(batch: list[Any], pack: Callable[[Any], bytes]) -> list[bytes]:
        """The chunks of a batch that holds buffers of records: each buffer packed, the events
        between them marshalled, in order."""
        payloads: list[bytes] = []
        events: list[tuple[Any, ...]] = []
        for item in batch:
            packed = None
            if type(item) is not tuple:
                with contextlib.suppress(TypeError):  # not a buffer: an event as any other
                    packed = pack(item)
            if packed is None:
                events.append(item)
                continue
            if events:
                payloads.append(marshal.dumps(events, MARSHAL_VERSION))
                events = []
            payloads.append(packed)
        if events:
            payloads.append(marshal.dumps(events, MARSHAL_VERSION))
        return payloads

    def close(self) -> None:
        """Stop the flusher, write what is left, close the file."""
        self.stop_flusher()
        self.flush()
        self._close_fd()

    def forget(self) -> None:
        """In a forked child: drop the parent's file and events (the parent writes them)."""
        self._close_fd()
        self.pending.clear()

    def _close_fd(self) -> None:
        """Close the file, and never write to its number again: the OS may give it to
        another file (the database itself) next."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _count(events: list[Any]) -> int:
    """How many events a list holds, a buffer of records counting as its records (its len)."""
    return sum(1 if type(e) is tuple else len(e) for e in events)


def read_event_file(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of one process's file, as event dicts; stops at a torn last chunk."""
    keys = RecordKeys()
    for records in read_chunks(path):
        yield from decode_records(records, keys)


def read_chunks(path: str | os.PathLike[str]) -> Iterator[list[tuple[Any, ...]]]:
    """The recorded tuples of one process's file, chunk by chunk, as written (short records
    and keys included); stops at a torn last chunk."""
    with open(path, "rb") as src:
        data = src.read()
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 8], "little")
        end = offset + 8 + size
        if end > len(data):
            return
        try:
            if data.startswith(PACKED_MAGIC, offset + 8):
                records = unpack_records(data[offset + 8 : end])
            else:
                records = marshal.loads(data[offset + 8 : end])
        except (ValueError, EOFError, TypeError, IndexError, struct.error):
            return
        offset = end
        yield records


def unpack_records(payload: bytes) -> list[tuple[Any, ...]]:
    """The short records of a packed chunk (written by the compiled probe's pack_records: see
    PACKED_MAGIC), as the 7-tuples Tracer.record appends."""
    _, count, table_size = _PACKED_HEAD.unpack_from(payload)
    start = _PACKED_HEAD.size
    table = marshal.loads(payload[start : start + table_size])
    body = payload[start + table_size :]
    if len(body) != count * _PACKED_RECORD.size:
        raise ValueError("packed chunk: its records are not whole")
    return [
        (t0, t1, table[key_op], table[sql], table[stmts], table[in_txn], table[site])
        for t0, t1, key_op, sql, stmts, in_txn, site in _PACKED_RECORD.iter_unpack(body)
    ]


class RecordKeys:
    """The keys short records name their caller by (CALL_KEY, TRACE_KEY), as given so far:
    one per process's recording, kept across its chunks."""

    __slots__ = ("called_as", "traced_as")

    def __init__(self) -> None:
        self.called_as: dict[int, tuple[Any, ...]] = {}
        self.traced_as: dict[int, tuple[Any, ...]] = {}


def decode_records(
    records: Iterable[Any], keys: RecordKeys | None = None, schema: Schema = SCHEMA
) -> Iterator[dict[str, Any]]:
    """Recorded tuples (an event file's chunk, the in-process recorder's ring) as event
    dicts: short records expanded by the keys given before them, keys themselves and
    anything that is not an event dropped. `schema`: the declaration the dicts follow."""
    return _expand(records, keys, schema, schema.run_call_dict, schema.trace_call_dict, True)


def full_records(
    records: Iterable[Any], keys: RecordKeys | None = None, schema: Schema = SCHEMA
) -> Iterator[tuple[Any, ...]]:
    """The same events as full tuples, in the schema's order (`decode_records` builds their
    dicts directly)."""
    return _expand(records, keys, schema, schema.run_call, schema.trace_call, False)


def _expand(
    records: Iterable[Any],
    keys: RecordKeys | None,
    schema: Schema,
    run_call: Callable[..., Any],
    trace_call: Callable[..., Any],
    as_dicts: bool,
) -> Iterator[Any]:
    if keys is None:
        keys = RecordKeys()
    called_as, traced_as = keys.called_as, keys.traced_as
    kinds = schema.keys
    full = schema.to_dict if as_dicts else None
    for record in records:
        if not isinstance(record, tuple) or not record:
            continue
        kind = record[0]
        if type(kind) is int:
            if len(record) == 7:
                call = _traced_call(record, traced_as, trace_call)
            else:
                call = _short_call(record, called_as, run_call)
            if call is not None:
                yield call
        elif kind == CALL_KEY:
            called_as[record[1]] = record[2:]
        elif kind == TRACE_KEY:
            traced_as[record[1]] = record[2:]
        elif kind in kinds:
            yield record if full is None else full(record)


def _short_call(
    record: tuple[Any, ...],
    called_as: dict[int, tuple[Any, ...]],
    run_call: Callable[..., Any],
) -> Any:
    """The full `call` record (tuple or dict: `run_call` makes it) of a short one (see
    CALL_KEY; schema.RUN_CALL), None for one that is not."""
    busy: int | None
    stmts: tuple[str, ...] | None
    if len(record) == 4:
        t0, duration, key, in_txn = record
        busy, stmts = 0, None
    elif len(record) == 6:
        t0, duration, key, in_txn, busy, stmts = record
    else:
        return None
    who = called_as.get(key)
    if who is None:
        return None
    conn, worker, thread, task, op, sql, probed = who
    if not probed:
        busy, stmts = None, ()
    own = (sql,) if stmts is None else stmts
    # schema.RUN_CALL.fills; a call that went through has no error and no call site.
    return run_call(t0, t0 + duration, conn, worker, thread, task, op, sql, own, busy, in_txn)


def _traced_call(
    record: tuple[Any, ...],
    traced_as: dict[int, tuple[Any, ...]],
    trace_call: Callable[..., Any],
) -> Any:
    """The full `call` record of a traced program's short one (see TRACE_KEY;
    schema.TRACE_CALL)."""
    t0, t1, key, sql, stmts, in_txn, site = record
    who = traced_as.get(key >> TRACE_OP_BITS << TRACE_OP_BITS)
    if who is None:
        return None
    conn, worker, thread, task = who
    op = TRACE_OPS[key & ((1 << TRACE_OP_BITS) - 1)]
    own = (sql,) if stmts is None else stmts
    # schema.TRACE_CALL.fills: it went through, so no error; it waited for nothing.
    return trace_call(t0, t1, conn, worker, thread, task, op, sql, own, in_txn, site)
