"""`lockprobe scenario LOG -o FILE.toml` and `trace --scenario`: a recording becomes a scenario
that, run again, gives the same findings, with none of the program's values in it.

Round trips use the real CLI on real database files: each built-in scenario is run with
--events, its log turned into a scenario, and that scenario run; a SQLAlchemy program with an
upgrade deadlock (lined up by threading events) is traced with --scenario and the file run."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sqlite_lockprobe.sources.run.scenario import builtin_names, load_scenario, parse_scenario
from sqlite_lockprobe.workflows.scenario_from_events import scenario_from_events
from sqlite_lockprobe.workflows.sqltemplate import generalise_sql
from tests.test_trace import SAFETY_TIMEOUT, lockprobe_trace, write_program

pytestmark = pytest.mark.probe


def findings(report: Path) -> list[str]:
    return sorted(f["pattern"] for f in json.loads(report.read_text())["findings"])


@pytest.mark.parametrize("name", builtin_names())
def test_a_builtin_scenarios_log_becomes_a_scenario_with_the_same_findings(
    name: str, invoke, tmp_path
) -> None:
    log, first, again = tmp_path / "log.jsonl", tmp_path / "first.json", tmp_path / "again.json"
    db, out = tmp_path / "run.db", tmp_path / "again.toml"
    invoke("run", name, "--db", str(db), "--events", str(log), "-q", "--json", str(first))
    made = invoke("scenario", str(log), "-o", str(out))
    assert made.exit_code == 0, made.output
    generated = load_scenario(str(out))
    assert generated.expect == tuple(findings(first))
    invoke("run", str(out), "-q", "--json", str(again))
    assert findings(again) == findings(first) == sorted(load_scenario(name).expect or ())


SQLALCHEMY_UPGRADE = """
import sys
import threading

from sqlalchemy import Integer, String, create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

SECRET_PARAM = "s3cr3t-" + "parameter"
SECRET_LITERAL = "s3cr3t-" + "literal"


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[int] = mapped_column(Integer, default=0)


engine = create_engine(f"sqlite:///{sys.argv[1]}", connect_args={"timeout": 0.5})


# SQLAlchemy's documented recipe for real transactions with pysqlite: no implicit BEGIN from
# the driver, a DEFERRED BEGIN emitted by SQLAlchemy when a transaction starts.
@event.listens_for(engine, "connect")
def no_driver_transactions(dbapi_connection, _record):
    dbapi_connection.isolation_level = None


@event.listens_for(engine, "begin")
def deferred_begin(connection):
    connection.exec_driver_sql("BEGIN")


Base.metadata.create_all(engine)
with Session(engine) as session:
    session.add(Item(name=SECRET_PARAM, price=987654))
    session.commit()

has_read, b_wrote, a_done = threading.Event(), threading.Event(), threading.Event()


def checkout():
    with Session(engine) as session:
        session.execute(select(func.count()).select_from(Item)).scalar()
        has_read.set()
        b_wrote.wait()
        session.add(Item(name=SECRET_PARAM, price=424242))
        try:
            session.commit()
        except OperationalError as exc:
            print("checkout:", exc.orig)
            session.rollback()
    a_done.set()


def restock():
    has_read.wait()
    with Session(engine) as session:
        session.execute(text(f"UPDATE item SET name = '{SECRET_LITERAL}' WHERE price = 987654"))
        b_wrote.set()
        a_done.wait()
        session.commit()


threads = [threading.Thread(target=checkout, name="checkout"),
           threading.Thread(target=restock, name="restock")]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_a_traced_sqlalchemy_upgrade_deadlock_becomes_a_scenario_that_reproduces_it(
    tmp_path,
) -> None:
    program = write_program(tmp_path, "shop.py", SQLALCHEMY_UPGRADE)
    traced = lockprobe_trace(
        tmp_path, sys.executable, program.name, "shop.db", options=("--scenario", "shop.toml")
    )
    assert traced.proc.returncode == 0, traced.proc.stderr
    assert "checkout: database is locked" in traced.proc.stdout
    assert traced.patterns == ["upgrade-deadlock"]
    toml = (tmp_path / "shop.toml").read_text()
    for secret in ("s3cr3t", "987654", "424242"):
        assert secret not in toml
    assert "# Made by lockprobe" in toml and "lockprobe run" in toml
    scenario = load_scenario(str(tmp_path / "shop.toml"))
    assert scenario.expect == ("upgrade-deadlock",)
    assert scenario.database.busy_timeout_ms == 500
    assert {s.mode for g in scenario.groups for s in g.steps if s.action == "begin"} == {None}
    assert any("CREATE TABLE item" in sql for sql in scenario.database.schema)
    again = tmp_path / "again.json"
    run = subprocess.run(
        [sys.executable, "-m", "sqlite_lockprobe", "run", "shop.toml", "-q", "--json", str(again)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=SAFETY_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    assert findings(again) == ["upgrade-deadlock"]


def test_the_schema_is_read_without_writing_the_users_database(invoke, tmp_path) -> None:
    log, db = tmp_path / "log.jsonl", tmp_path / "app.db"
    invoke("run", "rollback-readers", "--db", str(db), "--events", str(log), "-q")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    made = invoke("scenario", str(log), "-o", "-")
    assert made.exit_code == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert "CREATE TABLE orders" in made.output
    # The rows are generated, as many as the table had (setup's one, and the run's inserts).
    assert 'INSERT INTO \\"orders\\"' in made.output and "'row ' || i" not in made.output


def test_without_the_database_file_the_header_says_there_is_no_schema(invoke, tmp_path) -> None:
    log, db = tmp_path / "log.jsonl", tmp_path / "gone.db"
    invoke("run", "no-busy-timeout", "--db", str(db), "--events", str(log), "-q")
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    db.unlink()
    made = invoke("scenario", str(log), "-o", str(tmp_path / "out.toml"))
    text = (tmp_path / "out.toml").read_text()
    assert "# Note: no schema: " in text and "schema = []" in text
    assert "note: no schema" in made.output
    # --schema-from names a file to read it from instead.
    made = invoke("scenario", str(log), "-o", "-", "--schema-from", str(copy))
    assert "CREATE TABLE hits" in made.output and "no schema" not in made.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such event log"),
        ("this is not json\n", "not a lockprobe event log (no events found)"),
        ('{"k":"meta","t":1,"pid":1,"source":"trace x","db":null}\n', "no SQL calls"),
    ],
)
def test_a_missing_or_corrupt_log_is_one_line_and_exit_2(
    invoke, tmp_path, content: str | None, message: str
) -> None:
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content)
    result = invoke("scenario", str(log), "-o", str(tmp_path / "out.toml"))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output
    assert result.output.startswith("lockprobe: ")
    assert not (tmp_path / "out.toml").exists()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "INSERT INTO t (name, n) VALUES (?, 'alice') -- alice's row",
            "INSERT INTO t (name, n) VALUES ((:worker * 1000000000 + :iteration * 100 + 1), 'v')",
        ),
        (
            "SELECT * FROM t WHERE id = 42 AND d > datetime('now', '-1 day') LIMIT 20",
            "SELECT * FROM t WHERE id = 1 AND d > datetime('now', '-1 day') LIMIT 20",
        ),
        (
            "UPDATE t SET b = X'C0FFEE' WHERE \"it's\" = :x",
            "UPDATE t SET b = x'00' WHERE \"it's\" = (:worker * 1000000000 + :iteration * 100 + 1)",
        ),
        (
            "INSERT INTO s (p) VALUES (randomblob(3000))",
            "INSERT INTO s (p) VALUES (randomblob(3000))",
        ),
        ("INSERT INTO a (v) VALUES (:worker)", "INSERT INTO a (v) VALUES (:worker)"),
        ("SELECT 'o''brien' FROM t", "SELECT 'v' FROM t"),
    ],
)
def test_sql_keeps_its_shape_and_none_of_its_values(sql: str, expected: str) -> None:
    assert generalise_sql(sql) == expected


def call(t0: int, worker: str, op: str, sql: str, in_txn: bool, err: int | None = None) -> dict:
    """A `call` event as a log has it (times in ms for reading, nanoseconds in the event)."""
    return {
        "k": "call", "t0": t0 * 1_000_000, "t1": t0 * 1_000_000 + 100_000, "conn": f"c.{worker}",
        "worker": worker, "thread": worker, "task": None, "op": op, "sql": sql, "stmts": None,
        "busy": 0, "err": err, "ext": err, "msg": None, "in_txn": in_txn, "site": None,
    }  # fmt: skip


def hand_built_log() -> list[dict]:
    """A set-up phase (main), then two workers of group `view` (view#0's every pass refused at
    its INSERT, view#1's went through) beside a writer that held the lock."""
    events: list[dict] = [{"k": "meta", "t": 0, "pid": 1, "source": "trace app.py", "db": None}]
    for worker, group in (("main", "main"), ("view#0", "view"), ("view#1", "view"), ("w", "w")):
        events.append({"k": "worker", "t": 0, "worker": worker, "group": group, "kind": "thread",
                       "pid": 1, "thread": worker, "task": None})  # fmt: skip
        events.append({"k": "open", "t": 0, "conn": f"c.{worker}", "worker": worker, "group": "",
                       "pid": 1, "timeout_ms": 5000, "isolation": None, "db": None})  # fmt: skip
    events += [
        call(1, "main", "execute", "INSERT INTO t (v) VALUES (7)", False),
        call(10, "w", "execute", "BEGIN IMMEDIATE", True),
        call(11, "w", "execute", "INSERT INTO t (v) VALUES (8)", True),
        call(30, "w", "commit", "COMMIT", False),
    ]
    for n in range(2):
        base = 12 + n * 4
        events += [
            call(base, "view#0", "execute", "BEGIN", True),
            call(base + 1, "view#0", "execute", "SELECT v FROM t", True),
            call(base + 2, "view#0", "execute", "UPDATE t SET v = 1", True, err=5),
            call(base + 3, "view#0", "rollback", "ROLLBACK", False),
        ]
    for n in range(2):
        base = 40 + n * 5
        events += [
            call(base, "view#1", "execute", "BEGIN", True),
            call(base + 1, "view#1", "execute", "SELECT v FROM t", True),
            call(base + 2, "view#1", "execute", "UPDATE t SET v = 1", True),
            call(base + 3, "view#1", "commit", "COMMIT", False),
        ]
    events.sort(key=lambda e: e.get("t0", e.get("t", 0)))
    return events


def test_workers_of_a_group_are_one_group_even_when_one_never_got_through() -> None:
    draft = scenario_from_events(hand_built_log(), ["upgrade-deadlock"], name="hand")
    scenario = parse_scenario(draft.text)
    groups = {g.name: g for g in scenario.groups}
    view = groups["view"]
    assert view.count == 2 and view.repeat == 2
    assert [s.describe() for s in view.steps if s.action not in ("sleep", "signal", "wait")] == [
        "begin", "read SELECT v FROM t", "write UPDATE t SET v = 1", "commit",
    ]  # fmt: skip
    # The refused UPDATE waits for the writer's lock; the set-up phase ends before the rest.
    assert [s.describe() for s in groups["w"].steps if s.action in ("signal", "wait")] == [
        "wait done:main", "signal held",
    ]  # fmt: skip
    assert "wait held" in [s.describe() for s in view.steps]
    assert view.steps[0].describe() == "wait done:main"
    assert scenario.expect == ("upgrade-deadlock",)
