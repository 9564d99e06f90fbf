"""A traced program that opens several database files (a test suite's temporary databases):
the report lists them with each one's journal mode, and each finding names its own database
and that file's mode, and is worded for that mode. Real files, real threads under the real CLI;
the contention is lined up with events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.test_trace import trace_python

pytestmark = pytest.mark.probe

SAFETY_TIMEOUT = 120  # seconds: a hung test fails instead of hanging CI; never an assertion

# Rollback-journal databases first, then WAL ones (opened twice: most connections open a WAL
# database), then an upgrade deadlock on rollback-0.db: a DEFERRED reader that tries to write
# while another connection holds RESERVED.
SEVERAL_DATABASES = """
import sqlite3
import sys
import threading

N_ROLLBACK, N_WAL = int(sys.argv[1]), int(sys.argv[2])
for i in range(N_ROLLBACK):
    conn = sqlite3.connect(f"rollback-{i}.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.commit()
    conn.close()
for i in range(N_WAL):
    conn = sqlite3.connect(f"wal-{i}.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.commit()
    conn.close()
    again = sqlite3.connect(f"wal-{i}.db")  # opened in WAL this time
    again.execute("SELECT count(*) FROM t").fetchall()
    again.close()

DB = "rollback-0.db"
has_read, b_wrote, a_done = threading.Event(), threading.Event(), threading.Event()


def view_a():
    conn = sqlite3.connect(DB, timeout=2)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM t").fetchall()
    has_read.set()
    b_wrote.wait()
    try:
        conn.execute("INSERT INTO t (v) VALUES (1)")
    except sqlite3.OperationalError as exc:
        print("view_a:", exc)
        conn.rollback()
    a_done.set()
    conn.close()


def view_b():
    conn = sqlite3.connect(DB, timeout=2)
    has_read.wait()
    conn.execute("INSERT INTO t (v) VALUES (2)")
    b_wrote.set()
    a_done.wait()
    conn.commit()
    conn.close()


threads = [threading.Thread(target=view_a), threading.Thread(target=view_b)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def trace(tmp_path: Path, source: str, *args: str) -> tuple[Any, dict[str, Any]]:
    """The program traced with a wide terminal (every column of the tables whole)."""
    traced = trace_python(tmp_path, "prog.py", source, *args, env={**os.environ, "COLUMNS": "200"})
    return traced.proc, traced.report


def header_facts(stdout: str) -> dict[str, str]:
    """The report header's `label  value` lines, up to the first blank line after the rule."""
    facts = {}
    for line in stdout.split("lockprobe · trace", 1)[1].splitlines()[1:]:
        if not line.strip():
            break
        label, _, value = line.partition("  ")
        facts[label.strip()] = value.strip()
    return facts


def test_each_finding_names_its_database_and_is_worded_for_that_files_journal_mode(
    tmp_path,
) -> None:
    proc, report = trace(tmp_path, SEVERAL_DATABASES, "1", "3")
    assert proc.returncode == 0, proc.stderr
    assert "view_a: database is locked" in proc.stdout
    path = {name: str((tmp_path / f"{name}.db").resolve()) for name in ("rollback-0", "wal-1")}

    listed = {d["path"]: d for d in report["databases"]}
    assert {Path(p).name: d["journal_mode"] for p, d in listed.items()} == {
        "rollback-0.db": "delete",
        "wal-0.db": "wal",
        "wal-1.db": "wal",
        "wal-2.db": "wal",
    }
    assert listed[path["rollback-0"]]["connections"] == 3
    assert listed[path["rollback-0"]]["findings"] == ["upgrade-deadlock"]
    assert listed[path["wal-1"]] == {
        "path": path["wal-1"],
        "journal_mode": "wal",
        "connections": 2,
        "findings": [],
    }

    [finding] = report["findings"]
    assert finding["pattern"] == "upgrade-deadlock"
    assert finding["database"] == {"path": path["rollback-0"], "journal_mode": "delete"}
    words = finding["explanation"] + "\n".join(finding["evidence"]["lines"])
    assert "SHARED" in words and "WAL" not in words  # a rollback-journal database

    facts = header_facts(proc.stdout)
    assert facts["databases"] == "4 databases: 3 in WAL, 1 in rollback journal (delete)"
    assert "journal mode" not in facts
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert f"{path['rollback-0']} (delete): upgrade-deadlock" in lines
    for name in ("wal-0", "wal-1", "wal-2"):
        assert f"{tmp_path.resolve() / name}.db (wal)" in lines
    assert f"database: {path['rollback-0']} (journal mode delete)" in proc.stdout


def test_many_databases_are_summed_up_with_the_ones_findings_are_about(tmp_path) -> None:
    proc, report = trace(tmp_path, SEVERAL_DATABASES, "3", "9")
    assert proc.returncode == 0, proc.stderr
    assert len(report["databases"]) == 12
    facts = header_facts(proc.stdout)
    assert facts["databases"] == "12 databases: 9 in WAL, 3 in rollback journal (delete)"
    contended = tmp_path.resolve() / "rollback-0.db"
    assert facts["findings on"] == f"{contended} (delete): upgrade-deadlock"
    assert "wal-0.db" not in proc.stdout.split("Diagnosis")[0]  # not listed one by one


def test_one_database_keeps_the_single_database_header(tmp_path) -> None:
    proc, report = trace(tmp_path, SEVERAL_DATABASES, "1", "0")
    assert proc.returncode == 0, proc.stderr
    contended = str((tmp_path / "rollback-0.db").resolve())
    facts = header_facts(proc.stdout)
    assert facts["database"] == contended and facts["journal mode"] == "delete"
    assert report["database"] == {"path": contended, "journal_mode": "delete"}
    assert [d["path"] for d in report["databases"]] == [contended]


def test_a_database_switched_to_wal_by_the_program_is_reported_in_wal(tmp_path) -> None:
    # The probe reads the header right after the PRAGMA call, before the statement has ended
    # and written it: the successful PRAGMA itself says which mode the file is in now.
    source = """
    import sqlite3
    conn = sqlite3.connect("app.db")
    print(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    """
    proc, report = trace(tmp_path, source)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wal\n")
    path = str((tmp_path / "app.db").resolve())
    assert report["database"] == {"path": path, "journal_mode": "wal"}
    assert header_facts(proc.stdout)["journal mode"] == "wal"


def test_the_journal_mode_a_statement_sets_is_read_from_its_sql() -> None:
    from sqlite_lockprobe.events.databases import journal_mode_set_by

    assert journal_mode_set_by("PRAGMA journal_mode=WAL") == "wal"
    assert journal_mode_set_by("pragma main.journal_mode = 'truncate';") == "truncate"
    assert journal_mode_set_by('PRAGMA "main".journal_mode("delete")') == "delete"
    assert journal_mode_set_by("PRAGMA journal_mode") is None  # a question, not a change
    assert journal_mode_set_by("PRAGMA other.journal_mode=WAL") is None  # an attached file
    assert journal_mode_set_by("PRAGMA journal_mode=nonsense") is None
    assert journal_mode_set_by("SELECT 'journal_mode'") is None


def test_the_saved_log_of_a_trace_is_reported_with_the_same_databases(tmp_path) -> None:
    (tmp_path / "prog.py").write_text(textwrap.dedent(SEVERAL_DATABASES).lstrip("\n"))

    def lockprobe(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sqlite_lockprobe", *argv],
            capture_output=True,
            text=True,
            timeout=SAFETY_TIMEOUT,
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "200"},
        )

    traced = lockprobe(
        "trace", "-q", "--events", "events.jsonl", "--", sys.executable, "prog.py", "1", "3"
    )
    assert traced.returncode == 0, traced.stderr
    reported = lockprobe("report", "events.jsonl", "--json", "report.json")
    assert reported.returncode == 0, reported.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    contended = str((tmp_path / "rollback-0.db").resolve())
    assert [(d["journal_mode"], d["findings"]) for d in report["databases"]] == [
        ("delete", ["upgrade-deadlock"]),
        ("wal", []),
        ("wal", []),
        ("wal", []),
    ]
    [finding] = report["findings"]
    assert finding["database"] == {"path": contended, "journal_mode": "delete"}
    facts = header_facts(reported.stdout.replace("lockprobe · report", "lockprobe · trace"))
    assert facts["databases"] == "4 databases: 3 in WAL, 1 in rollback journal (delete)"
