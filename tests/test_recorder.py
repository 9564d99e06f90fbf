"""`sqlite_lockprobe.record()`: the in-process recorder, on real database files in tmp_path,
real threads and asyncio tasks lined up with events (never sleeps), and the real CLI reading
what it saved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import sqlite_lockprobe
from sqlite_lockprobe import recorder
from sqlite_lockprobe.cli import cli
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.probe.tracer import _flush_then_terminate
from sqlite_lockprobe.recorder import PRUNE_AT

pytestmark = pytest.mark.probe  # CI runs it on every CPython, compiled and pure Python

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"


@pytest.fixture(autouse=True)
def no_recorder_left() -> Iterator[None]:
    """A failed test must not leave sqlite3.connect patched for the next ones."""
    yield
    if recorder._active is not None:
        recorder._active.stop()


def make_table(db: Path) -> None:
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    setup.commit()
    setup.close()


def upgrade_deadlock(db: Path) -> list[str]:
    """Two threads: view_a reads in a DEFERRED transaction, view_b takes RESERVED, then
    view_a's write is refused at once. Returns what view_a's write raised."""
    has_read, b_wrote, a_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[str] = []

    def view_a() -> None:
        conn = sqlite3.connect(db, timeout=2)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchall()
        has_read.set()
        b_wrote.wait()
        try:
            conn.execute("INSERT INTO t (v) VALUES (1)")  # MARK: refused upgrade
        except sqlite3.OperationalError as exc:
            errors.append(str(exc))
            conn.rollback()
        a_done.set()
        conn.close()

    def view_b() -> None:
        conn = sqlite3.connect(db, timeout=2)
        has_read.wait()
        conn.execute("INSERT INTO t (v) VALUES (2)")  # MARK: winner takes the lock
        b_wrote.set()
        a_done.wait()
        conn.commit()
        conn.close()

    threads = [
        threading.Thread(target=view_a, name="view_a"),
        threading.Thread(target=view_b, name="view_b"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def line_of(mark: str) -> int:
    for number, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(mark)


def evidence_of(analysis: Any) -> str:
    return "\n".join(line for f in analysis.findings for line in f.evidence)


def test_two_threads_upgrade_deadlock_is_found_in_process(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db)
    with sqlite_lockprobe.record() as rec:
        errors = upgrade_deadlock(db)
    assert errors == ["database is locked"]
    analysis = rec.analysis()
    assert analysis.pattern_ids == ["upgrade-deadlock"]
    evidence = evidence_of(analysis)
    assert f"test_recorder.py:{line_of('refused upgrade')} view_a" in evidence
    assert f"test_recorder.py:{line_of('winner takes the lock')} view_b" in evidence
    assert rec.dropped == 0
    assert analysis.summary.notes == ()
    meta = [e for e in rec.events() if e["k"] == "meta"]
    assert meta and meta[0]["source"].startswith("record")


def test_a_healthy_workload_gives_no_finding(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db)
    start = threading.Barrier(3)

    def writer(n: int) -> None:
        conn = sqlite3.connect(db, timeout=10)
        start.wait()
        for i in range(40):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (n * 1000 + i,))
            conn.commit()
        conn.close()

    with sqlite_lockprobe.record() as rec:
        threads = [threading.Thread(target=writer, args=(n,), name=f"w{n}") for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    analysis = rec.analysis()
    assert analysis.findings == []
    assert analysis.summary.total.commits == 120


def test_the_ring_drops_the_oldest_events_and_says_how_many(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite_lockprobe.record(max_events=50) as rec:
        conn = sqlite3.connect(db)
        for i in range(200):
            conn.execute(f"SELECT {i}").fetchall()
        conn.close()
    events = rec.events()
    calls = [e["sql"] for e in events if e["k"] == "call"]
    assert calls == [f"SELECT {i}" for i in range(150, 200)]  # the last 50, in order
    # What names the calls is kept although it came first.
    assert [e["k"] for e in events if e["k"] in ("meta", "open", "close")] == [
        "meta",
        "open",
        "close",
    ]
    assert rec.dropped == 150
    analysis = rec.analysis()
    assert analysis.summary.total.calls == 50
    assert any(note.startswith("150 events dropped") for note in analysis.summary.notes)
    assert "max_events" in analysis.summary.notes[-1]


def test_names_of_connections_long_closed_are_let_go(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    connections = 3 * PRUNE_AT
    with sqlite_lockprobe.record(max_events=20) as rec:
        for i in range(connections):
            conn = sqlite3.connect(db)
            conn.execute(f"SELECT {i}").fetchall()
            conn.close()
    events = rec.events()
    opens = {e["conn"] for e in events if e["k"] == "open"}
    assert len(opens) < PRUNE_AT * 2  # not one per connection ever opened
    calls = [e for e in events if e["k"] == "call"]
    assert [c["sql"] for c in calls] == [
        f"SELECT {i}" for i in range(connections - 20, connections)
    ]
    assert {c["conn"] for c in calls} <= opens  # every kept call still has its connection
    assert rec.dropped == connections - 20


def test_saved_log_gives_the_same_patterns_to_lockprobe_report(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db)
    with sqlite_lockprobe.record() as rec:
        upgrade_deadlock(db)
    log = tmp_path / "events.jsonl"
    count = rec.save(log)
    assert count == len(log.read_text().splitlines()) == len(rec.events())
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["report", str(log), "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [f["pattern"] for f in report["findings"]] == rec.analysis().pattern_ids
    assert [f["pattern"] for f in report["findings"]] == ["upgrade-deadlock"]


def test_stop_restores_connect_and_stops_recording(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    original = sqlite3.connect
    sigterm = signal.getsignal(signal.SIGTERM)
    rec = sqlite_lockprobe.install()
    # The program's process is left alone: no SIGTERM handler of trace's (nor fork hooks).
    assert signal.getsignal(signal.SIGTERM) is sigterm
    assert getattr(sigterm, "func", None) is not _flush_then_terminate
    assert sqlite3.connect is not original
    assert sqlite3.dbapi2.connect is sqlite3.connect
    kept = sqlite3.connect(db)
    kept.execute("SELECT 'while recording'").fetchall()
    kept.commit()
    rec.stop()
    assert sqlite3.connect is original and sqlite3.dbapi2.connect is original
    kept.execute("SELECT 'after stop'").fetchall()  # still works, recorded nowhere
    kept.commit()
    kept.rollback()
    later = sqlite3.connect(db)
    assert type(later) is sqlite3.Connection
    later.execute("SELECT 'later'").fetchall()
    kept.close()
    later.close()
    sqls = [e["sql"] for e in rec.events() if e["k"] == "call"]
    assert sqls == ["SELECT 'while recording'", "COMMIT"]
    assert [e["k"] for e in rec.events()].count("open") == 1
    assert not rec.active
    rec.stop()  # twice: harmless


def test_a_connection_opened_before_install_is_not_probed(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    before = sqlite3.connect(db)
    with sqlite_lockprobe.record() as rec:
        before.execute("SELECT 'before'").fetchall()
        after = sqlite3.connect(db)
        after.execute("SELECT 'after'").fetchall()
        after.close()
    before.close()
    events = rec.events()
    assert [e["sql"] for e in events if e["k"] == "call"] == ["SELECT 'after'"]
    assert len([e for e in events if e["k"] == "open"]) == 1


def test_db_records_only_that_database(tmp_path: Path) -> None:
    wanted, other = tmp_path / "wanted.db", tmp_path / "other.db"
    with sqlite_lockprobe.record(db=wanted) as rec:
        for path in (wanted, other):
            conn = sqlite3.connect(path)
            conn.execute(f"SELECT '{path.name}'").fetchall()
            conn.close()
    events = rec.events()
    assert [e["db"] for e in events if e["k"] == "open"] == [str(wanted.resolve())]
    assert [e["sql"] for e in events if e["k"] == "call"] == ["SELECT 'wanted.db'"]


def test_a_second_recorder_while_one_records_is_an_error(tmp_path: Path) -> None:
    with sqlite_lockprobe.record() as first:
        with pytest.raises(LockprobeError, match="already recording"):
            sqlite_lockprobe.record()
        assert first.active
    with sqlite_lockprobe.record() as second:  # once stopped, another may start
        assert second.active
    with pytest.raises(LockprobeError, match="started already"):
        second.start()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_max_events_must_be_a_positive_count(bad: Any) -> None:
    with pytest.raises(LockprobeError, match="max_events"):
        sqlite_lockprobe.record(max_events=bad)
    with sqlite_lockprobe.record() as rec:  # the refused one installed nothing
        assert rec.active


def test_asyncio_tasks_blocking_one_loop_are_a_self_deadlock_by_task(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_table(db)

    async def session_b(flushed: asyncio.Event, release: asyncio.Event) -> None:
        conn = sqlite3.connect(db, timeout=0.2)
        conn.execute("INSERT INTO t (v) VALUES (2)")
        flushed.set()
        await release.wait()  # holds the write lock while it awaits
        conn.commit()
        conn.close()

    async def session_a(flushed: asyncio.Event, release: asyncio.Event) -> None:
        conn = sqlite3.connect(db, timeout=0.2)
        await flushed.wait()
        # Blocks the loop: session_b cannot go on to release, so this fails with BUSY.
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("INSERT INTO t (v) VALUES (1)")
        release.set()
        conn.close()

    async def main() -> None:
        flushed, release = asyncio.Event(), asyncio.Event()
        await asyncio.gather(
            asyncio.create_task(session_b(flushed, release), name="session_b"),
            asyncio.create_task(session_a(flushed, release), name="session_a"),
        )

    with sqlite_lockprobe.record() as rec:
        asyncio.run(main())
    analysis = rec.analysis()
    assert analysis.pattern_ids == ["self-deadlock"]
    evidence = evidence_of(analysis)
    assert "task session_a" in evidence and "task session_b" in evidence


def test_the_example_in_docs_api_md_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "api_example"}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs
    assert not recorder._active  # the example's with-block stopped it
    assert [f.pattern for f in namespace["analysis"].findings] == ["upgrade-deadlock"]
    log = tmp_path / "events.jsonl"
    result = CliRunner().invoke(cli, ["report", str(log), "-q", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [f["pattern"] for f in report["findings"]] == ["upgrade-deadlock"]


def test_record_install_and_recorder_are_the_public_api() -> None:
    assert {"record", "install", "Recorder", "__version__"} <= set(sqlite_lockprobe.__all__)
    from sqlite_lockprobe.recorder import Recorder, install, record

    assert sqlite_lockprobe.Recorder is Recorder
    assert sqlite_lockprobe.install is install and sqlite_lockprobe.record is record


def test_forget_lets_go_of_what_came_before_without_counting_it_dropped(tmp_path: Path) -> None:
    """The pytest plugin's test windows: after forget(), the diagnosis is of what came next
    alone, and a connection opened before is still named."""
    db = tmp_path / "app.db"
    make_table(db)
    with sqlite_lockprobe.record() as rec:
        upgrade_deadlock(db)
        kept_conn = sqlite3.connect(db)
        assert rec.kept > 0
        rec.forget()
        assert rec.kept == 0
        kept_conn.execute("SELECT count(*) FROM t").fetchall()
        kept_conn.close()
    analysis = rec.analysis()
    assert analysis.findings == []  # the deadlock came before forget()
    assert rec.dropped == 0 and analysis.summary.notes == ()
    calls = [e for e in rec.events() if e["k"] == "call"]
    assert [e["sql"] for e in calls] == ["SELECT count(*) FROM t"]
    opened = {e["conn"] for e in rec.events() if e["k"] == "open"}
    assert calls[0]["conn"] in opened


def test_forget_lets_go_of_the_names_of_closed_connections(tmp_path: Path) -> None:
    """A test suite opens a connection per test: each window must not carry the names of
    every connection before it."""
    with sqlite_lockprobe.record() as rec:
        for i in range(5):
            conn = sqlite3.connect(tmp_path / f"db{i}.db")
            conn.execute("SELECT 1").fetchall()
            conn.close()
        still_open = sqlite3.connect(tmp_path / "open.db")
        still_open.execute("SELECT 1").fetchall()
        rec.forget()
        still_open.execute("SELECT 2").fetchall()
        still_open.close()
    events = rec.events()
    opens = [e for e in events if e["k"] == "open"]
    assert [Path(e["db"]).name for e in opens] == ["open.db"]
    assert [e["sql"] for e in events if e["k"] == "call"] == ["SELECT 2"]
