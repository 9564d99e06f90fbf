"""A connection its program drops without close() is freed when it is untraced: at once by
reference counting on CPython 3.10; by the cyclic collector from 3.11 (sqlite3's statement
cache refers back to its connection). A probe that referred back to its connection would
leave it to the collector on 3.10 too, holding its write lock meanwhile: another connection
would get "database is locked" that the program does not get untraced. And every closed
connection's probe would be garbage for the collector, which a web app opening a connection
per request pays for. The collector is off in these tests, so only reference counting frees."""

from __future__ import annotations

import gc
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sqlite_lockprobe

pytestmark = pytest.mark.probe


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def dropped_writer_lingers(db: Path) -> bool:
    """Whether a connection that took the write lock and was dropped mid-transaction, without
    close(), still holds the lock: another connection with no busy timeout then fails."""
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE IF NOT EXISTS t (x)")
    setup.execute("DELETE FROM t")
    setup.commit()
    setup.close()

    def write_and_drop() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (1)")
        # returns without close(): the last reference goes with this frame

    write_and_drop()
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return True
    finally:
        other.close()
        gc.collect()  # the lingering one, if any, before the next round
    return False


@pytest.mark.usefixtures("no_cyclic_collector")
@pytest.mark.parametrize("sample", [None, 0.5], ids=["recorded", "sampled"])
def test_a_dropped_writer_lingers_exactly_as_untraced(tmp_path: Path, sample: float | None) -> None:
    untraced = dropped_writer_lingers(tmp_path / "untraced.db")
    assert untraced is (sys.version_info >= (3, 11))  # CPython's own behaviour, as above
    options = {} if sample is None else {"sample": sample}
    with sqlite_lockprobe.record(**options) as recorder:
        # With sample=0.5 the connections alternate: the setup one is recorded, the dropped
        # writer is not (its probe has the busy handler only).
        lingers = dropped_writer_lingers(tmp_path / "app.db")
    assert lingers is untraced
    assert len([e for e in recorder.events() if e["k"] == "open"]) == 3
    if sample is not None:
        assert recorder._tracer.unsampled == 1


def test_a_dropped_probe_leaves_no_cycle_behind(tmp_path: Path) -> None:
    """What a connection's probe and its recording state hold is freed with it: nothing is
    left for the cyclic collector."""
    with sqlite_lockprobe.record():
        for _ in range(3):
            conn = sqlite3.connect(tmp_path / "app.db")
            conn.execute("SELECT 1").fetchall()
            conn.close()
            del conn
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not {"Connection", "ConnectionProbe", "_Connection", "StatementBudget"} & set(left)
