"""The recorder's sampling mode and dumps (docs/api.md): real files, real threads, the lock
held by a thread until an Event says so."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import sqlite_lockprobe
from sqlite_lockprobe import recorder
from sqlite_lockprobe.cli import cli
from sqlite_lockprobe.errors import LockprobeError

pytestmark = pytest.mark.probe


@pytest.fixture(autouse=True)
def no_recorder_left() -> Iterator[None]:
    yield
    if recorder._active is not None:
        recorder._active.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    setup.commit()
    setup.close()
    return path


def _hold_write_lock(
    conn: sqlite3.Connection, locked: threading.Event, release: threading.Event
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES (1)")
    locked.set()
    release.wait(30)
    conn.execute("COMMIT")


def give_up(waiter: sqlite3.Connection, holder: sqlite3.Connection) -> str:
    """`holder` (in a thread) keeps the write lock while `waiter` writes until its busy
    handler gives up; returns what the waiter's write raised."""
    locked, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold_write_lock, args=(holder, locked, release))
    thread.start()
    try:
        assert locked.wait(10)
        with pytest.raises(sqlite3.OperationalError) as failure:
            waiter.execute("INSERT INTO t (v) VALUES (2)")  # MARK: gives up
        return str(failure.value)
    finally:
        release.set()
        thread.join()


def line_of_mark() -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if "# MARK: gives up" in line)


def report_patterns(tmp_path: Path, log: str) -> list[str]:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["report", log, "-q", "--json", str(out)])
    assert result.exit_code in (0, 1), result.output
    return [f["pattern"] for f in json.loads(out.read_text())["findings"]]


def test_every_nth_connection_is_recorded_call_by_call_the_others_only_probed(db: Path) -> None:
    with sqlite_lockprobe.record(sample=0.5) as rec:
        conns = [sqlite3.connect(db, isolation_level=None) for _ in range(4)]
        for conn in conns:
            conn.execute("SELECT count(*) FROM t").fetchall()
        for conn in conns:
            conn.close()
    sampled = [type(c).__name__ for c in conns]
    assert [hasattr(c, "_lockprobe") for c in conns] == [True, False, True, False]
    assert all("Watched" in name for name in sampled[1::2])
    events = rec.events()
    opens = [e["conn"] for e in events if e["k"] == "open"]
    closes = [e["conn"] for e in events if e["k"] == "close"]
    calls = {e["conn"] for e in events if e["k"] == "call"}
    assert len(opens) == len(closes) == 4
    assert calls == {opens[0], opens[2]}
    notes = rec.analysis().summary.notes
    assert any(n.startswith("sampled: 2 of 4 connections") for n in notes)


def test_full_recording_has_no_sampling_note(db: Path) -> None:
    with sqlite_lockprobe.record() as rec:
        sqlite3.connect(db).close()
    assert rec.analysis().summary.notes == ()


def test_an_unsampled_connections_give_up_is_dumped_and_report_names_the_cause(
    tmp_path: Path, db: Path
) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    with sqlite_lockprobe.record(sample=0.5, dump_on_locked=dumps, dump_seconds=60) as rec:
        holder = sqlite3.connect(
            db, isolation_level=None, check_same_thread=False
        )  # the first: sampled
        waiter = sqlite3.connect(db, timeout=0.2, isolation_level=None)  # unsampled
        assert not hasattr(waiter, "_lockprobe")
        assert give_up(waiter, holder) == "database is locked"
        rec.settle_dumps()
        holder.close()
        waiter.close()
    assert len(rec.dumps) == 1 and os.path.dirname(rec.dumps[0]) == str(dumps)
    assert os.path.basename(rec.dumps[0]).startswith("lockprobe-locked-")
    events = [json.loads(line) for line in Path(rec.dumps[0]).read_text().splitlines()]
    busy = [e for e in events if e["k"] == "busy"]
    assert busy and busy[-1]["delay_ms"] == 0
    assert report_patterns(tmp_path, rec.dumps[0]) == ["long-write-transaction"]


def test_a_storm_of_give_ups_writes_one_dump_per_interval(tmp_path: Path, db: Path) -> None:
    with sqlite_lockprobe.record(dump_on_locked=tmp_path / "locked.jsonl") as rec:
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        waiter = sqlite3.connect(db, timeout=0, isolation_level=None)
        for _ in range(3):
            give_up(waiter, holder)
        rec.settle_dumps()
    assert len(rec.dumps) == 1 and rec.dumps_skipped == 2
    assert Path(rec.dumps[0]).name.startswith("locked-locked-")
    assert Path(rec.dumps[0]).suffix == ".jsonl"


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="Unix signals")
def test_a_signal_dumps_and_stop_restores_the_handler(tmp_path: Path, db: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with sqlite_lockprobe.record(dump_on_locked=tmp_path, dump_signal=signal.SIGUSR1) as rec:
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO t (v) VALUES (3)")
        conn.commit()
        signal.raise_signal(signal.SIGUSR1)  # the handler runs before this call returns
        rec.settle_dumps()
        conn.close()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert len(rec.dumps) == 1 and "lockprobe-signal-" in rec.dumps[0]
    assert report_patterns(tmp_path, rec.dumps[0]) == []


def test_dump_writes_what_save_writes_for_the_last_seconds(tmp_path: Path, db: Path) -> None:
    with sqlite_lockprobe.record() as rec:
        conn = sqlite3.connect(db)
        conn.execute("SELECT 1").fetchall()
        conn.close()
    rec.save(tmp_path / "all.jsonl")
    assert rec.dump(tmp_path / "dump.jsonl") == len(rec.events())
    assert (tmp_path / "dump.jsonl").read_text() == (tmp_path / "all.jsonl").read_text()
    rec.dump(tmp_path / "none.jsonl", seconds=0)
    kinds = {json.loads(line)["k"] for line in (tmp_path / "none.jsonl").read_text().splitlines()}
    assert "call" not in kinds and "open" in kinds


@pytest.mark.parametrize("sample", [0, -0.5, 1.5, True, "0.1"])
def test_a_sample_outside_zero_to_one_is_one_clear_error(sample: object) -> None:
    with pytest.raises(LockprobeError, match=r"sample must be a fraction in \(0, 1\]"):
        sqlite_lockprobe.record(sample=sample)  # type: ignore[arg-type]
    assert recorder._active is None


def test_an_unwritable_dump_place_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LockprobeError, match="is not a writable directory"):
        sqlite_lockprobe.record(dump_on_locked=tmp_path / "missing" / "x.jsonl")
    with pytest.raises(LockprobeError, match="dump_signal needs dump_on_locked"):
        sqlite_lockprobe.record(dump_signal=signal.SIGTERM)
    assert recorder._active is None


def test_a_give_up_behind_an_unsampled_holder_is_unexplained_never_healthy(db: Path) -> None:
    with sqlite_lockprobe.record(sample=1 / 3) as rec:
        sqlite3.connect(db).close()  # connection 0: the sampled one
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        waiter = sqlite3.connect(db, timeout=0.1, isolation_level=None)
        assert give_up(waiter, holder) == "database is locked"
        holder.close()
        waiter.close()
    analysis = rec.analysis()
    assert analysis.pattern_ids == ["unexplained-busy"]
    assert any(n.startswith("sampled: 1 of 3 connections") for n in analysis.summary.notes)
    [failed] = [e for e in rec.events() if e["k"] == "call"]
    assert failed["err"] == 5 and failed["site"].endswith(
        f"test_recorder_sampling.py:{line_of_mark()} give_up"
    )
