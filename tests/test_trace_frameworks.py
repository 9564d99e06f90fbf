"""Real frameworks under `lockprobe trace` behave exactly as untraced, and the report names the
pattern and the application's own lines (not the framework's):

- a small Django project (tests/apps/django_shop: settings in code, one model, a view that
  reads then writes in `transaction.atomic()`), served by a threaded WSGI server and hit by
  concurrent HTTP requests; stopped by SIGTERM or SIGINT to lockprobe, which passes it on;
- SQLAlchemy 2.x async with aiosqlite (tests/apps/sqla_async.py).

Contention is lined up, never timed: the view's test hook (SHOP_LINE_UP) makes two requests
wait for each other between their read and their write; the SQLAlchemy program's sessions
hand over with asyncio events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import pytest

from tests.test_trace import SAFETY_TIMEOUT, lockprobe_trace

pytestmark = pytest.mark.probe

APPS = Path(__file__).with_name("apps")
VIEWS = APPS / "django_shop" / "shop" / "views.py"
SQLA_ASYNC = APPS / "sqla_async.py"


def line_in(path: Path, mark: str) -> int:
    """The number of the line marked `# MARK: <mark>` in a file."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(f"no line marked {mark!r} in {path}")


# --------------------------------------------------------------------------------- Django


@dataclass
class Served:
    """One run of the Django server: the HTTP status of every request, and how it ended."""

    statuses: list[int]
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def patterns(self) -> list[str]:
        return sorted(f["pattern"] for f in self.report["findings"])

    def evidence(self) -> str:
        return "\n".join(line for f in self.report["findings"] for line in f["evidence"]["lines"])


def serve_and_hit(
    site: Path,
    mode: str,
    clients: int,
    requests_each: int,
    traced: bool,
    stop_with: signal.Signals,
    line_up: int = 0,
) -> Served:
    """Start the server (under `lockprobe trace --json` when `traced`), make the requests from
    `clients` threads at once, then stop it with a signal to the process started (lockprobe
    passes it on to the server)."""
    for stale in site.glob("app.db*"):
        stale.unlink()
    port_file, report, events = site / "port", site / "report.json", site / "events.jsonl"
    for old in (port_file, report, events):
        old.unlink(missing_ok=True)
    server = [sys.executable, "serve.py", "app.db", port_file.name, mode]
    lockprobe = [sys.executable, "-m", "sqlite_lockprobe", "trace"]
    lockprobe += ["--json", str(report), "--events", str(events), "--"]
    env = {**os.environ, "SHOP_LINE_UP": str(line_up) if line_up else ""}
    proc = subprocess.Popen(
        [*lockprobe, *server] if traced else server,
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _wait_for_port(port_file, proc)
        statuses = _requests(port, clients, requests_each)
        proc.send_signal(stop_with)
        out, err = proc.communicate(timeout=SAFETY_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    loaded = json.loads(report.read_text()) if traced else {}
    logged = [json.loads(line) for line in events.read_text().splitlines()] if traced else []
    return Served(sorted(statuses), proc.returncode, out, err, loaded, logged)


def _wait_for_port(port_file: Path, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + SAFETY_TIMEOUT
    while not port_file.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the server ended before listening:\n{out}\n{err}")
        assert time.monotonic() < deadline, "the server never listened"
        time.sleep(0.02)
    return int(port_file.read_text())


def _requests(port: int, clients: int, requests_each: int) -> list[int]:
    statuses: list[int] = []
    start = threading.Barrier(clients)

    def client() -> None:
        start.wait()
        for _ in range(requests_each):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/bump/", timeout=SAFETY_TIMEOUT
                ) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def requests_calls(served: Served) -> list[dict[str, Any]]:
    """The calls made while serving requests (not the server's own set-up)."""
    return [e for e in served.events if e["k"] == "call" and e["worker"] != "MainThread"]


@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The project copied to a directory of its own: call sites read `shop/views.py:N`."""
    site = tmp_path_factory.mktemp("django") / "site"
    shutil.copytree(APPS / "django_shop", site, ignore=shutil.ignore_patterns("__pycache__"))
    yield site


@pytest.fixture(scope="module")
def lined_up(django_site: Path) -> tuple[Served, Served]:
    """Two requests that both read before either writes (deferred transactions): untraced,
    then traced."""
    runs = [
        serve_and_hit(django_site, "deferred", 2, 1, traced, signal.SIGTERM, line_up=2)
        for traced in (False, True)
    ]
    return runs[0], runs[1]


def test_django_views_that_read_then_write_are_an_upgrade_deadlock_at_the_views_line(
    lined_up: tuple[Served, Served],
) -> None:
    plain, traced = lined_up
    # One request wins, the other gets "database is locked" at once: a 500, traced or not.
    assert plain.statuses == traced.statuses == [200, 500]
    assert plain.returncode == traced.returncode == 0, traced.stderr
    assert "server: stopped" in plain.stdout and "server: stopped" in traced.stdout
    for run in (plain, traced):  # the same failure, logged by Django
        assert run.stderr.count("Internal Server Error: /bump/") == 1
        assert run.stderr.rstrip().endswith("OperationalError: database is locked")
    assert traced.patterns == ["upgrade-deadlock"]
    evidence = traced.evidence()
    write = f"shop/views.py:{line_in(VIEWS, 'write')} bump"
    read = f"shop/views.py:{line_in(VIEWS, 'read')} bump"
    assert "loser: Thread-" in evidence and write in evidence.split("loser:")[1].splitlines()[0]
    assert "winner: the RESERVED lock" in evidence
    reads = [e for e in requests_calls(traced) if e["sql"].startswith("SELECT")]
    # A read that went through inside the transaction is named by the line that began it
    # (the view's atomic block); one that took over a millisecond, by its own line.
    atomic = f"shop/views.py:{line_in(VIEWS, 'atomic')} bump"
    assert len(reads) == 2 and {e["site"] for e in reads} <= {read, atomic}
    assert traced.report["trace"]["exit_code"] == 0


def test_django_commit_and_rollback_are_placed_at_the_views_atomic_block(
    lined_up: tuple[Served, Served],
) -> None:
    _, traced = lined_up
    atomic = f"shop/views.py:{line_in(VIEWS, 'atomic')} bump"
    ends = [e for e in requests_calls(traced) if e["op"] in ("commit", "rollback")]
    assert len(ends) == 2 and {e["site"] for e in ends} == {atomic}


@pytest.mark.skipif(django.VERSION < (5, 1), reason="transaction_mode needs Django 5.1")
def test_django_with_immediate_transactions_under_concurrent_load_is_healthy(
    django_site: Path,
) -> None:
    plain, traced = (
        serve_and_hit(django_site, "immediate", 4, 5, is_traced, signal.SIGINT)
        for is_traced in (False, True)
    )
    assert plain.statuses == traced.statuses == [200] * 20
    assert plain.returncode == traced.returncode == 0, traced.stderr
    assert "server: stopped" in traced.stdout
    assert traced.patterns == []
    assert traced.report["trace"]["connections"] >= 20  # one per request (CONN_MAX_AGE 0)


# ------------------------------------------------------------------ SQLAlchemy + aiosqlite


def test_sqlalchemy_async_sessions_a_held_write_is_a_long_write_transaction(tmp_path) -> None:
    program = tmp_path / SQLA_ASYNC.name
    shutil.copy(SQLA_ASYNC, program)
    plain = subprocess.run(
        [sys.executable, program.name, "plain.db"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=SAFETY_TIMEOUT,
    )
    traced = lockprobe_trace(tmp_path, sys.executable, program.name, "traced.db")
    assert plain.returncode == traced.proc.returncode == 0, traced.proc.stderr
    expected = "waiter: database is locked\nholder: committed\nrows: ['holder']\n"
    assert plain.stdout == expected
    assert traced.proc.stdout.startswith(expected)  # then the report
    assert traced.patterns == ["long-write-transaction"]
    evidence = traced.evidence()
    holder = f"sqla_async.py:{line_in(SQLA_ASYNC, 'holder writes')} holder"
    waiter = f"sqla_async.py:{line_in(SQLA_ASYNC, 'waiter writes')} waiter"
    assert "holder: the RESERVED lock held by holder" in evidence and holder in evidence
    assert "task holder" in evidence and "task waiter" in evidence
    assert waiter in evidence and "failed with SQLITE_BUSY" in evidence
