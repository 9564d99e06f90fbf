"""The probe on real connections and real lock contention. Runs on every supported CPython
(`.ci/run` runs the `probe` marker on 3.10 to 3.13)."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sqlite_lockprobe.probe.capi import ConnectionProbe, busy_delay_ms, load_capi, read_busy_timeout

pytestmark = pytest.mark.probe


class Events(list):
    def busy(self) -> list[tuple]:
        return [e for e in self if e[0] == "busy"]


def _planned_retries(timeout_ms: int) -> list[int]:
    delays, n = [], 0
    while (d := busy_delay_ms(n, timeout_ms)) > 0:
        delays.append(d)
        n += 1
    return delays


@pytest.mark.parametrize("timeout_ms", [1, 7, 100, 229, 300, 1000, 5000])
def test_busy_schedule_sleeps_exactly_the_timeout_like_sqlite(timeout_ms: int) -> None:
    delays = _planned_retries(timeout_ms)
    assert sum(delays) == timeout_ms
    # SQLite's own first delays (main.c sqliteDefaultBusyCallback), clipped at the timeout.
    assert delays[:3] == [1, 2, 5][: len(delays[:3])] or timeout_ms < 8


def test_zero_timeout_gives_up_at_the_first_call() -> None:
    assert busy_delay_ms(0, 0) == 0


def test_capi_is_reachable_and_passes_its_self_test() -> None:
    api, why = load_capi()
    assert api is not None, why


def _hold_write_lock(path: Path, locked: threading.Event, release: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES (1)")
    locked.set()
    release.wait(30)
    conn.execute("COMMIT")
    conn.close()


def test_probe_records_busy_handler_calls_while_another_connection_writes(db: Path) -> None:
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, locked, release))
    holder.start()
    assert locked.wait(10)
    events = Events()
    conn = sqlite3.connect(db, timeout=0.2, isolation_level=None)
    probe = ConnectionProbe(conn, "waiter", events.append)
    try:
        assert probe.instrumented and probe.timeout_ms == 200
        with pytest.raises(sqlite3.OperationalError) as failure:
            conn.execute("BEGIN IMMEDIATE")
        primary, extended = probe.error_codes(failure.value)
        assert (primary, extended) == (5, 5)
        busy = events.busy()
        assert probe.busy_calls == len(busy) == len(_planned_retries(200)) + 1
        assert [e[3] for e in busy] == list(range(len(busy)))  # retry counts 0, 1, 2, ...
        assert busy[-1][4] == 0  # the last call gave up, as SQLite's handler would
        assert probe.take_statements() == ("BEGIN IMMEDIATE",)
    finally:
        release.set()
        holder.join()
        conn.close()


def test_marked_busy_calls_are_claimed_with_the_call_that_waited_and_its_place_kept(
    db: Path,
) -> None:
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, locked, release))
    holder.start()
    assert locked.wait(10)
    conn = sqlite3.connect(db, timeout=0.01, isolation_level=None)
    probe = ConnectionProbe(conn, "waiter", lambda e: None, mark_busy=True)
    try:
        conn.execute("SELECT count(*) FROM t").fetchall()  # an earlier call of the same run
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("BEGIN IMMEDIATE")
        # The wait's marks make the list longer than one entry per call, two per handler call.
        retries = len(_planned_retries(10)) + 1
        assert len(probe.statements) == 2 + 2 * retries
        assert probe.claim(1) == (("BEGIN IMMEDIATE",), retries)
        assert probe.statements == ["SELECT count(*) FROM t"] and probe.busy_unclaimed == 0
    finally:
        release.set()
        holder.join()
        conn.close()


def test_probed_wait_lasts_at_least_the_busy_timeout(db: Path) -> None:
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, locked, release))
    holder.start()
    assert locked.wait(10)
    conn = sqlite3.connect(db, timeout=0.15, isolation_level=None)
    probe = ConnectionProbe(conn, "waiter", lambda e: None)
    try:
        start = time.monotonic()
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("BEGIN IMMEDIATE")
        assert time.monotonic() - start >= 0.15
        assert probe.busy_calls > 1  # the probe's handler did the waiting
    finally:
        release.set()
        holder.join()
        conn.close()


def test_a_dropped_probe_gives_the_connection_back_its_plain_busy_timeout(db: Path) -> None:
    # A probe nobody keeps is collected while its connection stays open: SQLite must not call
    # its freed callback afterwards (it did: a crash, or a wait of random length).
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, locked, release))
    holder.start()
    assert locked.wait(10)
    conn = sqlite3.connect(db, timeout=0.15, isolation_level=None)
    seen: list[tuple[object, ...]] = []
    probe = ConnectionProbe(conn, "waiter", seen.append)
    assert probe.instrumented
    calls_before = probe.busy_calls
    del probe
    gc.collect()
    try:
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(sqlite3.OperationalError):
                conn.execute("BEGIN IMMEDIATE")
            assert time.monotonic() - start >= 0.15
        assert calls_before == 0 and seen == []  # SQLite's own handler waited, not the probe
    finally:
        release.set()
        holder.join()
        conn.close()


def test_waiter_gets_the_lock_when_the_holder_commits_during_the_wait(db: Path) -> None:
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, locked, release))
    holder.start()
    assert locked.wait(10)
    events = Events()
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    probe = ConnectionProbe(conn, "waiter", lambda e: (events.append(e), release.set()))
    try:
        conn.execute("BEGIN IMMEDIATE")  # the first busy call releases the holder
        conn.execute("COMMIT")
        assert probe.busy_calls >= 1
    finally:
        release.set()
        holder.join()
        conn.close()


def _deferred_reader_then_writer(
    path: Path, wal: bool
) -> tuple[sqlite3.Connection, ConnectionProbe, Events]:
    setup = sqlite3.connect(path)
    if wal:
        setup.execute("PRAGMA journal_mode=WAL")
    setup.close()
    events = Events()
    reader = sqlite3.connect(path, timeout=5, isolation_level=None)
    probe = ConnectionProbe(reader, "reader", events.append)
    reader.execute("BEGIN DEFERRED")
    reader.execute("SELECT count(*) FROM t").fetchall()
    return reader, probe, events


def test_upgrade_deadlock_in_rollback_mode_fails_with_zero_handler_calls(db: Path) -> None:
    reader, probe, events = _deferred_reader_then_writer(db, wal=False)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # RESERVED: the reader can never upgrade
    writer.execute("INSERT INTO t (v) VALUES (2)")
    with pytest.raises(sqlite3.OperationalError) as failure:
        reader.execute("INSERT INTO t (v) VALUES (3)")
    assert probe.error_codes(failure.value) == (5, 5)
    assert probe.busy_calls == 0 and not events.busy()
    reader.execute("ROLLBACK")
    writer.execute("COMMIT")
    reader.close()
    writer.close()


def test_upgrade_deadlock_in_wal_mode_is_busy_snapshot_with_zero_handler_calls(db: Path) -> None:
    reader, probe, events = _deferred_reader_then_writer(db, wal=True)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("INSERT INTO t (v) VALUES (2)")  # commits after the reader's snapshot
    with pytest.raises(sqlite3.OperationalError) as failure:
        reader.execute("INSERT INTO t (v) VALUES (3)")
    assert probe.error_codes(failure.value) == (5, 517)
    assert probe.busy_calls == 0 and not events.busy()
    reader.execute("ROLLBACK")
    reader.close()
    writer.close()


def test_probe_follows_a_busy_timeout_pragma(db: Path) -> None:
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    probe = ConnectionProbe(conn, "c", lambda e: None)
    conn.execute("PRAGMA busy_timeout = 1234")
    probe.take_statements()
    assert probe.timeout_ms == 1234
    conn.close()


def test_detach_restores_sqlites_own_handler_with_the_same_timeout(db: Path) -> None:
    conn = sqlite3.connect(db, timeout=2.5, isolation_level=None)
    probe = ConnectionProbe(conn, "c", lambda e: None)
    probe.detach()
    assert read_busy_timeout(conn) == 2500
    conn.close()


def test_trace_records_pythons_implicit_begin(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level="DEFERRED")
    probe = ConnectionProbe(conn, "c", lambda e: None)
    conn.execute("INSERT INTO t (v) VALUES (5)")
    conn.commit()
    statements = probe.take_statements()
    assert statements[0].strip().upper().startswith("BEGIN")
    assert statements[-1] == "COMMIT"
    conn.close()
