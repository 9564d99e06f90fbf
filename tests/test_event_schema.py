"""Every tuple lockprobe records follows the one event schema (events/schema.py): recorded
for real by the run engine (threads, processes, asyncio), by `lockprobe trace` on both probe
paths and by `record()`, read back as written (short records and keys included), expanded
to full tuples and checked field by field. And the short records' decoders follow the
schema: a field added to it, with a default, is in every decoded call."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sqlite_lockprobe
from sqlite_lockprobe.events import eventfile
from sqlite_lockprobe.events.eventfile import (
    RecordKeys,
    decode_records,
    full_records,
    read_chunks,
)
from sqlite_lockprobe.events.schema import KINDS, SCHEMA, STR, Field, Schema
from sqlite_lockprobe.sources import trace
from sqlite_lockprobe.sources.run import runner
from tests.test_speedups import PATHS, PURE, compiled, probe_package  # noqa: F401
from tests.test_trace import write_program

pytestmark = pytest.mark.probe

Recording = list[list[tuple[Any, ...]]]  # each process's recorded tuples, in file order


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recording]:
    """The recorded tuples of every event file the run engine or trace reads back, taken
    from the file itself as it is read."""
    files: Recording = []
    for module in (runner, trace):
        read = module.read_event_file

        def reading(path: Any, read: Callable[..., Any] = read) -> Any:
            files.append([record for chunk in read_chunks(path) for record in chunk])
            return read(path)

        monkeypatch.setattr(module, "read_event_file", reading)
    yield files


def check_against_schema(recording: Recording) -> Counter[str]:
    """Every full tuple of the recording follows the schema; returns the shapes seen: each
    kind, and each short record's length (the run engine's 4 and 6, a traced call's 7)."""
    seen: Counter[str] = Counter()
    for records in recording:
        for record in records:
            if isinstance(record[0], int):
                seen[f"short{len(record)}"] += 1
        for full in full_records(records, RecordKeys()):
            assert SCHEMA.problems(full) == [], full
            seen[full[0]] += 1
    return seen


@pytest.mark.parametrize(
    ("scenario", "options"),
    [
        ("upgrade-deadlock", ()),  # threads
        ("process-long-write", ()),  # spawned processes
        ("fastapi-self-deadlock", ()),  # asyncio tasks on the loop
        ("aiosqlite-convoy", ("--no-probe",)),  # a thread per connection, not probed
    ],
)
def test_run_records_only_tuples_the_schema_allows(
    scenario: str, options: tuple[str, ...], invoke: Any, recorded: Recording, tmp_path: Path
) -> None:
    result = invoke("run", scenario, "-q", "--json", str(tmp_path / "report.json"), *options)
    assert result.exit_code in (0, 1), result.output
    seen = check_against_schema(recorded)
    assert seen["short4"] and seen["call"] and seen["open"] and seen["worker_end"], seen
    if "--no-probe" not in options:
        assert seen["short6"] and seen["busy"] and seen["holders"], seen


# Threads lined up by events: a holder keeps the write lock while another connection is
# refused at once (timeout 0: a full `call` with its error codes, a busy-handler call); then
# short records from several threads and an asyncio task, and a failure of another kind.
CONTENTION = """
import asyncio, sqlite3, sys, threading

DB = sys.argv[1]
setup = sqlite3.connect(DB)
setup.execute("PRAGMA journal_mode=wal")
setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
setup.commit()
setup.close()

held, refused = threading.Event(), threading.Event()


def holder():
    conn = sqlite3.connect(DB, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES (1)")
    held.set()
    refused.wait()
    conn.execute("COMMIT")
    conn.close()


def refused_writer():
    held.wait()
    conn = sqlite3.connect(DB, timeout=0)
    try:
        conn.execute("INSERT INTO t (v) VALUES (2)")
    except sqlite3.OperationalError as exc:
        print("refused:", exc)
    refused.set()
    conn.close()


def writer(n):
    conn = sqlite3.connect(DB, timeout=60)
    for i in range(20):
        conn.execute("INSERT INTO t (v) VALUES (?)", (n * 100 + i,))
        conn.commit()
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(1,), (2,)])
    conn.executescript("SELECT 1; SELECT 2;")
    conn.rollback()
    try:
        conn.execute("INSERT INTO t (id, v) VALUES (1, 0)")
    except sqlite3.IntegrityError:
        conn.rollback()
    conn.close()


threads = [threading.Thread(target=holder), threading.Thread(target=refused_writer)]
for t in threads:
    t.start()
for t in threads:
    t.join()
threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()


async def task():
    conn = sqlite3.connect(DB)
    for i in range(5):
        conn.execute("SELECT count(*) FROM t").fetchall()
    conn.close()


asyncio.run(task())
"""


@pytest.mark.parametrize("path", PATHS)
def test_trace_records_only_tuples_the_schema_allows_on_both_probe_paths(
    path: str,
    compiled: None,  # noqa: F811
    invoke: Any,
    recorded: Recording,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if path == "python":
        monkeypatch.setenv(PURE, "1")  # the traced program inherits it
    else:
        monkeypatch.delenv(PURE, raising=False)
    program = write_program(tmp_path, "prog.py", CONTENTION)
    db = tmp_path / "app.db"
    report = tmp_path / "report.json"
    result = invoke("trace", "--json", str(report), "--", sys.executable, str(program), str(db))
    assert result.exit_code == 0, result.output
    seen = check_against_schema(recorded)
    assert seen["short7"] and seen["call"] and seen["busy"], seen
    metas = [full for r in recorded for full in full_records(r) if full[0] == "meta"]
    assert {meta[11] for meta in metas} == {path}  # probe_path: the path that recorded


def test_record_keeps_only_tuples_the_schema_allows(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    has_lock, refused = threading.Event(), threading.Event()
    with sqlite_lockprobe.record() as recording:
        setup = sqlite3.connect(db)
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        setup.commit()

        def holder() -> None:
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            has_lock.set()
            refused.wait()
            conn.execute("COMMIT")
            conn.close()

        thread = threading.Thread(target=holder)
        thread.start()
        has_lock.wait()
        refused_conn = sqlite3.connect(db, timeout=0)
        with pytest.raises(sqlite3.OperationalError):
            refused_conn.execute("INSERT INTO t (v) VALUES (1)")
        refused.set()
        thread.join()
        for i in range(10):
            setup.execute("INSERT INTO t (v) VALUES (?)", (i,))
            setup.commit()
        refused_conn.close()
        setup.close()
        records, _ = recording._ring.snapshot()  # as recorded: short records and keys too
    seen = check_against_schema([records])
    assert seen["short7"] and seen["call"] and seen["close"], seen


def with_extra_call_field(default: Any) -> Schema:
    """The schema with a field added at the end of `call`, as a change to schema.py adds it."""
    return Schema({**KINDS, "call": (*KINDS["call"], Field("extra", STR, default))})


def test_a_call_field_added_to_the_schema_is_in_calls_decoded_from_short_records() -> None:
    records = [
        (eventfile.CALL_KEY, 1, "c1.1", "w1", 11, None, "execute", "INSERT", True),
        (eventfile.TRACE_KEY, 8, "c2.1", "w2", 12, "task"),
        (100, 5, 1, True),  # the run engine's short call
        (200, 5, 1, False, 2, ("BEGIN", "INSERT")),  # with busy and statements
        (300, 305, 8 + 3, "COMMIT", None, False, None),  # a traced one (op 3: commit)
    ]
    variant = with_extra_call_field("unset")
    before = list(decode_records(records))
    after = list(decode_records(records, schema=variant))
    assert [e["extra"] for e in after] == ["unset"] * 3
    for old, new in zip(before, after, strict=True):
        # What the variant adds is all that changes; the run engine's calls, which leave out
        # `folded` while it is last, now carry its default ahead of the new field.
        added = {k: v for k, v in new.items() if k not in old}
        assert {k: new[k] for k in old} == old
        assert added == {"extra": "unset"} or added == {"folded": 0, "extra": "unset"}
    for full in full_records(records, schema=variant):
        assert variant.problems(full) == []
        assert SCHEMA.problems(full) != []  # one field too many for the schema as it is


def test_the_builders_fill_defaults_and_refuse_what_a_kind_does_not_have() -> None:
    call = SCHEMA.call_event(
        t0=1, t1=2, conn="c1.1", worker="w", thread=3, task=None, op="execute", sql="SELECT 1",
        stmts=("SELECT 1",), in_txn=False,
    )  # fmt: skip
    assert SCHEMA.problems(call) == []
    assert SCHEMA.to_dict(call)["folded"] == 0 and SCHEMA.to_dict(call)["err"] is None
    fields = dict(zip(SCHEMA.fields["call"], call[1:], strict=True))
    with pytest.raises(TypeError, match="folded"):
        SCHEMA.run_call_event(**fields)  # the run engine's have no `folded`
    with pytest.raises(TypeError):
        SCHEMA.call_event(t0=1)  # the fields without a default are required
