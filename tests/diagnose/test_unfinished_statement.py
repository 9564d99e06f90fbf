"""A statement left unfinished outside a transaction (a cursor not exhausted, legacy
autocommit) keeps its read lock: `unfinished` events, recorded while another connection waits,
make it a read hold from the call that ran it to the last moment it was seen open."""

from __future__ import annotations

from sqlite_lockprobe.diagnose.detectors import diagnose
from sqlite_lockprobe.diagnose.model import UNFINISHED_STATEMENT
from tests.diagnose.eventlog import EventLog, ns

EXPORT = "SELECT id, name FROM items"


def unfinished(log: EventLog, conn: str, t_ms: float, sql: str, site: str | None) -> None:
    log.events.append({"k": "unfinished", "t": ns(t_ms), "conn": conn, "sql": sql, "site": site})


def export_blocks_commit(sightings: list[float]) -> EventLog:
    log = EventLog(journal_mode="delete")
    log.open("reader")
    log.open("writer", timeout_ms=500)
    log.call("reader", 1, 2, EXPORT, in_txn=False)  # autocommit: Python opened no transaction
    log.call("writer", 3, 4, "INSERT INTO items (name) VALUES ('new')", stmts=["BEGIN ", "INSERT"])
    retries = [(5 + 30 * i, 30.0) for i in range(16)] + [(505, 0.0)]
    log.call("writer", 4, 506, "COMMIT", op="commit", failed=True, busy=retries)
    for t_ms in sightings:
        unfinished(log, "reader", t_ms, EXPORT, "export.py:18 export")
    return log


def test_an_unfinished_select_is_a_read_hold_until_last_seen_open() -> None:
    timeline = export_blocks_commit([20, 506]).timeline()
    # The SELECT's own call holds for its duration (autocommit); then the unfinished statement.
    call_hold, hold = sorted(
        (h for h in timeline.read_holds if h.holder.conn == "reader"), key=lambda h: h.t1
    )
    assert (call_hold.t0, call_hold.t1, call_hold.released_by) == (ns(1), ns(2), "autocommit")
    assert hold.released_by == UNFINISHED_STATEMENT
    assert hold.taken_by == EXPORT
    assert (hold.t0, hold.t1) == (ns(1), ns(506))  # from its call to the last sighting
    assert hold.holder.call_site == "export.py:18 export"  # where its thread was then


def test_a_commit_that_fails_behind_it_is_reader_blocks_writer_with_the_cursor_advice() -> None:
    (finding,) = diagnose(export_blocks_commit([20, 506]).timeline())
    assert finding.pattern == "reader-blocks-writer" and finding.severity == "error"
    assert finding.facts["unfinished_statements"] == 1
    text = "\n".join(finding.evidence)
    assert f"taken by `{EXPORT}`, still unfinished when last seen" in text
    assert "export.py:18 export" in text
    assert "close the cursor" in finding.advice[0].text  # finishing the read comes first
    assert "WAL" in finding.advice[1].text


def test_without_sightings_the_failure_is_unexplained_not_healthy() -> None:
    # What a recording without `unfinished` events (before this probe) gave: two failures and
    # "no lock problems found"; now at least an honest unexplained-busy.
    findings = diagnose(export_blocks_commit([]).timeline())
    assert [f.pattern for f in findings] == ["unexplained-busy"]


def test_a_sighting_inside_a_transaction_adds_nothing() -> None:
    log = EventLog(journal_mode="delete")
    log.open("reader")
    log.call("reader", 1, 2, "BEGIN")
    log.call("reader", 2, 3, EXPORT, in_txn=True)
    unfinished(log, "reader", 10, EXPORT, None)
    log.call("reader", 20, 21, "COMMIT", op="commit", in_txn=False)
    holds = log.timeline().read_holds
    assert [(h.released_by, h.t0, h.t1) for h in holds] == [("COMMIT", ns(2), ns(21))]
