"""`pytest --lockprobe`: the plugin, run by pytest itself in a subprocess (pytester) on small
test suites written here: real database files, real threads and asyncio tasks lined up with
events, xdist workers, pytest-django's test database. One run per test function, several
checks on each run."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest

from sqlite_lockprobe import pytest_plugin
from sqlite_lockprobe.probe import tracer

pytest_plugins = ["pytester"]

# The application code the suites test: an upgrade deadlock between two threads, the reader
# optionally on a connection given (a session fixture's).
DEADLOCK = '''
import sqlite3
import threading


def make_table(db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.commit()
    conn.close()


def upgrade_deadlock(db, reader=None):
    """view_a reads in a DEFERRED transaction, view_b takes RESERVED, view_a's write is
    refused at once. Returns what view_a's write raised."""
    has_read, b_wrote, a_done = threading.Event(), threading.Event(), threading.Event()
    errors = []

    def view_a():
        conn = reader or sqlite3.connect(db, timeout=2)
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM t").fetchall()
        has_read.set()
        b_wrote.wait()
        try:
            conn.execute("INSERT INTO t (v) VALUES (1)")  # MARK: refused
        except sqlite3.OperationalError as exc:
            errors.append(str(exc))
            conn.rollback()
        a_done.set()

    def view_b():
        conn = sqlite3.connect(db, timeout=2)
        has_read.wait()
        conn.execute("INSERT INTO t (v) VALUES (2)")  # MARK: winner
        b_wrote.set()
        a_done.wait()
        conn.commit()
        conn.close()

    threads = [threading.Thread(target=view_a, name="view_a"),
               threading.Thread(target=view_b, name="view_b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def healthy(db):
    conn = sqlite3.connect(db, timeout=2)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES (3)")
    conn.commit()
    conn.close()
'''

CONFTEST = """
import sqlite3

import pytest

import deadlock


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    db = tmp_path_factory.mktemp("shared") / "shared.db"
    deadlock.make_table(db)
    conn = sqlite3.connect(db, timeout=2, check_same_thread=False)
    yield db, conn
    conn.close()
"""

APP_TESTS = """
import sqlite3
import sys

import pytest

import deadlock


def test_deadlock(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    assert deadlock.upgrade_deadlock(db) == ["database is locked"]


def test_healthy(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    deadlock.healthy(db)


@pytest.mark.lockprobe(expect=["upgrade-deadlock"])
def test_reproduces_the_bug(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    deadlock.upgrade_deadlock(db)


@pytest.mark.lockprobe(expect="upgrade-deadlock")
def test_does_not_reproduce(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    deadlock.healthy(db)


def test_opens_the_session_connection(shared):
    db, conn = shared
    conn.execute("SELECT count(*) FROM t").fetchall()


def test_reads_on_the_session_connection(shared):
    db, conn = shared
    assert deadlock.upgrade_deadlock(db, reader=conn) == ["database is locked"]


@pytest.fixture
def deadlock_at_teardown(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    yield
    deadlock.upgrade_deadlock(db)


def test_teardown_deadlocks(deadlock_at_teardown):
    pass


def test_patched_only_when_asked(request):
    probe = [m for m in sys.modules if m.startswith("sqlite_lockprobe.") and m != "sqlite_lockprobe.pytest_plugin"]
    if request.config.getoption("lockprobe"):
        assert type(sqlite3.connect).__name__ == "function", sqlite3.connect
        assert "sqlite_lockprobe.probe.tracer" in probe
    else:
        assert type(sqlite3.connect).__name__ == "builtin_function_or_method", sqlite3.connect
        assert sqlite3.dbapi2.connect is sqlite3.connect
        assert probe == []
"""

ASYNC_TESTS = """
import asyncio
import sqlite3

import aiosqlite
import pytest

import deadlock


@pytest.mark.asyncio
async def test_async_upgrade_deadlock(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    has_read, b_wrote, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    errors = []

    async def view_a():
        async with aiosqlite.connect(db, timeout=2) as conn:
            await conn.execute("BEGIN")
            await (await conn.execute("SELECT count(*) FROM t")).fetchall()
            has_read.set()
            await b_wrote.wait()
            try:
                await conn.execute("INSERT INTO t (v) VALUES (1)")  # MARK: async refused
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))
                await conn.rollback()
            a_done.set()

    async def view_b():
        async with aiosqlite.connect(db, timeout=2) as conn:
            await has_read.wait()
            await conn.execute("INSERT INTO t (v) VALUES (2)")
            b_wrote.set()
            await a_done.wait()
            await conn.commit()

    await asyncio.gather(asyncio.create_task(view_a(), name="view_a"),
                         asyncio.create_task(view_b(), name="view_b"))
    assert errors == ["database is locked"]


@pytest.mark.asyncio
async def test_async_healthy(tmp_path):
    db = tmp_path / "app.db"
    deadlock.make_table(db)
    async with aiosqlite.connect(db, timeout=2) as conn:
        await conn.execute("INSERT INTO t (v) VALUES (1)")
        await conn.commit()
"""

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""


def line_of(source: str, mark: str) -> int:
    """The line of `# MARK: mark` in a file pytester wrote (it strips the source first)."""
    for number, line in enumerate(textwrap.dedent(source).strip().splitlines(), 1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(mark)


# The lines the findings must name: the application code of each side of the deadlock.
REFUSED = f"deadlock.py:{line_of(DEADLOCK, 'refused')} view_a"
WINNER = f"deadlock.py:{line_of(DEADLOCK, 'winner')} view_b"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(deadlock=DEADLOCK, conftest=CONFTEST, test_app=APP_TESTS)
    pytester.makefile(".ini", pytest=INI)
    return pytester


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """nodeid -> PASSED, FAILED, ERROR (or "ERROR PASSED": passed, then an error at
    teardown), from -rA's short summary."""
    found: dict[str, set[str]] = {}
    for line in result.outlines:
        match = re.match(r"(PASSED|FAILED|ERROR) (\S+::\S+)", line)
        if match:
            found.setdefault(match.group(2), set()).add(match.group(1))
    return {nodeid: " ".join(sorted(seen)) for nodeid, seen in found.items()}


def lockprobe_section(result: pytest.RunResult) -> str:
    """The session summary's lockprobe section, up to the next section."""
    text = result.stdout.str()
    start = text.index("lockprobe: ")
    start = text.rindex("\n", 0, start) + 1
    end = text.find("\n=", start + 1)
    return text[start : end if end != -1 else None]


def pids_in(finding: dict[str, Any]) -> set[str]:
    return set(re.findall(r"\bpid (\d+)", "\n".join(finding["evidence"]["lines"])))


def test_off_by_default_nothing_is_patched_and_no_test_fails(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("-rA", "test_app.py")
    assert result.ret == 0, result.stdout.str()
    assert outcomes(result) == {
        f"test_app.py::{name}": "PASSED"
        for name in (
            "test_deadlock",
            "test_healthy",
            "test_reproduces_the_bug",
            "test_does_not_reproduce",
            "test_opens_the_session_connection",
            "test_reads_on_the_session_connection",
            "test_teardown_deadlocks",
            "test_patched_only_when_asked",
        )
    }
    assert "lockprobe:" not in result.stdout.str()


def test_findings_fail_their_tests_with_nodeid_and_lines(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_async=ASYNC_TESTS)
    out = suite.path / "report.json"
    result = suite.runpytest_subprocess("-rA", "--lockprobe", "--lockprobe-json", str(out))
    assert outcomes(result) == {
        "test_app.py::test_deadlock": "FAILED",
        "test_app.py::test_healthy": "PASSED",
        "test_app.py::test_reproduces_the_bug": "PASSED",  # expected, so not a failure
        "test_app.py::test_does_not_reproduce": "FAILED",
        "test_app.py::test_opens_the_session_connection": "PASSED",
        # the session fixture's connection, opened in an earlier test, is still probed
        "test_app.py::test_reads_on_the_session_connection": "FAILED",
        # what only the teardown showed fails the teardown: pytest's ERROR
        "test_app.py::test_teardown_deadlocks": "ERROR PASSED",
        "test_app.py::test_patched_only_when_asked": "PASSED",
        "test_async.py::test_async_upgrade_deadlock": "FAILED",
        "test_async.py::test_async_healthy": "PASSED",
    }, result.stdout.str()
    assert result.ret == 1
    text = result.stdout.str()
    assert "ERROR at teardown of test_teardown_deadlocks" in text
    # the failure names the pattern and both lines of code involved
    failure = text[text.index("_ test_deadlock _") : text.index("_ test_does_not_reproduce _")]
    assert "upgrade-deadlock (error, high confidence)" in failure
    assert f"code: {REFUSED}" in failure and f"code: {WINNER}" in failure
    assert "did not find the expected pattern upgrade-deadlock" in text

    section = lockprobe_section(result)
    assert section.splitlines()[0].strip("= ") == (
        "lockprobe: 5 findings in 5 of 9 tests that used sqlite3"
    )
    assert (
        "test_app.py::test_deadlock\n"
        "  upgrade-deadlock (error): Read-then-write transactions fail at once (upgrade deadlock)\n"
        f"    {REFUSED}\n"
        f"    {WINNER}\n"
    ) in section
    assert "  upgrade-deadlock (error, expected): " in section
    refused_async = f"test_async.py:{line_of(ASYNC_TESTS, 'async refused')} view_a"
    assert "test_async.py::test_async_upgrade_deadlock\n  upgrade-deadlock" in section
    assert refused_async in section

    document = json.loads(out.read_text())
    assert document["schema_version"] == 1 and document["command"] == "pytest"
    by_test = {f["nodeid"]: f for f in document["findings"]}
    assert sorted(by_test) == [
        "test_app.py::test_deadlock",
        "test_app.py::test_reads_on_the_session_connection",
        "test_app.py::test_reproduces_the_bug",
        "test_app.py::test_teardown_deadlocks",
        "test_async.py::test_async_upgrade_deadlock",
    ]
    for finding in document["findings"]:
        assert finding["pattern"] == "upgrade-deadlock"
        assert finding["severity"] == "error" and finding["confidence"] == "high"
        assert finding["evidence"]["lines"] and finding["advice"]
    assert by_test["test_app.py::test_deadlock"]["code"] == [REFUSED, WINNER]
    assert by_test["test_app.py::test_reproduces_the_bug"]["expected"] is True
    assert by_test["test_app.py::test_deadlock"]["expected"] is False
    assert refused_async in by_test["test_async.py::test_async_upgrade_deadlock"]["code"]
    tests = {t["nodeid"]: t for t in document["pytest"]["tests"]}
    assert tests["test_app.py::test_healthy"]["patterns"] == []
    assert tests["test_app.py::test_healthy"]["calls"] >= 4
    assert tests["test_async.py::test_async_healthy"]["calls"] >= 2
    assert "test_app.py::test_patched_only_when_asked" not in tests  # no sqlite3 call


def test_warn_only_warns_and_the_summary_still_lists(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "-rA", "--lockprobe", "--lockprobe-warn", "-k", "test_deadlock or test_healthy"
    )
    assert result.ret == 0, result.stdout.str()
    assert outcomes(result) == {
        "test_app.py::test_deadlock": "PASSED",
        "test_app.py::test_healthy": "PASSED",
    }
    text = result.stdout.str()
    warnings = text[text.index("warnings summary") :]
    assert "LockprobeWarning: lockprobe found during this test:" in warnings
    assert "test_app.py::test_deadlock" in warnings
    assert f"code: {REFUSED}" in warnings
    assert "test_app.py::test_deadlock\n  upgrade-deadlock (error)" in lockprobe_section(result)


def test_ini_turns_it_on_and_fail_on_picks_the_patterns(suite: pytest.Pytester) -> None:
    suite.makefile(".ini", pytest=INI + "lockprobe = true\n")
    result = suite.runpytest_subprocess(
        "-rA", "--lockprobe-fail-on", "no-busy-timeout,write-convoy", "-k", "test_deadlock"
    )
    # on (the summary lists the finding) but upgrade-deadlock is not one to fail on
    assert result.ret == 0, result.stdout.str()
    assert "lockprobe: 1 finding in 1 of 1 test that used sqlite3" in result.stdout.str()
    result = suite.runpytest_subprocess(
        "-rA", "--lockprobe-fail-on", "upgrade-deadlock", "-k", "test_deadlock"
    )
    assert outcomes(result) == {"test_app.py::test_deadlock": "FAILED"}


def test_usage_errors_unknown_pattern_ids_and_under_trace(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = suite.runpytest_subprocess("--lockprobe", "--lockprobe-fail-on", "upgrade-deadlok")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--lockprobe-fail-on: unknown pattern id 'upgrade-deadlok'" in result.stderr.str()

    result = suite.runpytest_subprocess("--lockprobe-json", str(suite.path / "no" / "r.json"))
    assert result.ret == 0  # off: the option is not looked at
    result = suite.runpytest_subprocess(
        "--lockprobe", "--lockprobe-json", str(suite.path / "no" / "r.json")
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "--lockprobe-json: " in result.stderr.str() and "no such directory" in result.stderr.str()
    )

    assert pytest_plugin.TRACE_ENV == tracer.ENV_DIR
    with monkeypatch.context() as env:
        env.setenv(tracer.ENV_DIR, str(suite.path))
        result = suite.runpytest_subprocess("--lockprobe", "-k", "test_healthy")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "runs under `lockprobe trace`" in result.stderr.str()

    suite.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.lockprobe(expect=["upgrade_deadlock"])
        def test_typo():
            pass
        """
    )
    result = suite.runpytest_subprocess("--lockprobe", "test_typo.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "test_typo.py::test_typo: @pytest.mark.lockprobe(expect=...): unknown pattern id "
        "'upgrade_deadlock'"
    ) in result.stderr.str()


def test_xdist_workers_findings_reach_the_controller(pytester: pytest.Pytester) -> None:
    one_test = """
    import deadlock

    def test_{name}(tmp_path):
        db = tmp_path / "app.db"
        deadlock.make_table(db)
        assert deadlock.upgrade_deadlock(db) == ["database is locked"]
    """
    pytester.makepyfile(
        deadlock=DEADLOCK,
        test_one=textwrap.dedent(one_test).format(name="one"),
        test_two=textwrap.dedent(one_test).format(name="two"),
        test_typo="""
        import pytest

        @pytest.mark.lockprobe(expect=["upgrade_deadlock"])
        def test_typo():
            pass
        """,
    )
    out = pytester.path / "report.json"
    # loadfile: one file per worker, so each worker runs one of the tests
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadfile", "--lockprobe", "--lockprobe-json", str(out)
    )
    # a worker cannot stop the session with a usage error: the test errors, naming the id
    result.assert_outcomes(failed=2, errors=1)
    assert "unknown pattern id 'upgrade_deadlock'" in result.stdout.str()
    section = lockprobe_section(result)
    assert "lockprobe: 2 findings in 2 of 2 tests that used sqlite3" in section
    assert "test_one.py::test_one\n  upgrade-deadlock" in section
    assert "test_two.py::test_two\n  upgrade-deadlock" in section
    findings = json.loads(out.read_text())["findings"]
    assert sorted(f["nodeid"] for f in findings) == [
        "test_one.py::test_one",
        "test_two.py::test_two",
    ]
    pids = [pids_in(f) for f in findings]
    assert all(len(p) == 1 for p in pids) and pids[0] != pids[1]  # one from each worker


DJANGO_CONFTEST = """
import django
from django.conf import settings


def pytest_configure(config):
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(config.rootpath / "app.sqlite3")}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        USE_TZ=True,
    )
    django.setup()
"""

DJANGO_TESTS = """
import pytest
from django.contrib.auth.models import Group, User


@pytest.mark.django_db
def test_user():
    User.objects.create_user("ann")
    assert User.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_transactional_flushes():
    Group.objects.create(name="staff")
    assert Group.objects.count() == 1


@pytest.mark.django_db
def test_after_flush():
    assert Group.objects.count() == 0
"""


def test_django_test_database_setup_gives_no_finding(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(conftest=DJANGO_CONFTEST, test_django=DJANGO_TESTS)
    out = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "-p",
        "django",
        "--lockprobe",
        "--lockprobe-fail-on",
        "any",
        "--lockprobe-json",
        str(out),
    )
    result.assert_outcomes(passed=3)
    document = json.loads(out.read_text())
    assert document["findings"] == []
    tests = {t["nodeid"]: t["calls"] for t in document["pytest"]["tests"]}
    # the first test's setup created the test database (migrations): recorded, no finding
    assert tests["test_django.py::test_user"] > 100
    assert tests["test_django.py::test_transactional_flushes"] > 0
    assert "lockprobe: 0 findings in 0 of 3 tests that used sqlite3" in result.stdout.str()
