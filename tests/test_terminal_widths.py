"""The terminal reports read well at 80 columns (a pipe, a CI log), 120 and 200: every line
within the width, no pattern id, worker or group name broken mid-word, finding titles whole,
and the timeline's waiter and holder told apart. Real runs of real scenarios, drawn by rich's
recording console."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console, RenderableType

from sqlite_lockprobe.diagnose.analysis import Analysis, analyze
from sqlite_lockprobe.report import runreport
from sqlite_lockprobe.report.checkreport import check_table
from sqlite_lockprobe.report.fitting import ELLIPSIS, ellipsize_middle, fold_identifier
from sqlite_lockprobe.report.terminal_timeline import resample, worst_window
from sqlite_lockprobe.sources.run.runner import run_scenario
from sqlite_lockprobe.sources.run.scenario import load_scenario, parse_scenario
from sqlite_lockprobe.workflows.checking import check_scenario

WIDTHS = (80, 120, 200)

# A nightly batch keeps the write lock until both request handlers have given up (their
# busy_timeout is 100 ms): long group names, long SQL, failures every run.
LONG_NAMES = """
name = "long-names"
description = "A nightly batch holds the write lock while a request handler's insert times out"

[database]
journal_mode = "delete"
busy_timeout_ms = 100
transaction_mode = "autocommit"
schema = ["CREATE TABLE inventory_adjustments (id INTEGER PRIMARY KEY, sku TEXT, delta INTEGER)"]

[[group]]
name = "nightly_inventory_reconciliation_batch"
steps = [
  { begin = "immediate" },
  { write = "INSERT INTO inventory_adjustments (sku, delta) VALUES ('nightly', 1)" },
  { signal = "batch-holds-the-write-lock" },
  { wait = "done:request_handler_for_checkout" },
  "commit",
]

[[group]]
name = "request_handler_for_checkout"
count = 2
steps = [
  { wait = "batch-holds-the-write-lock" },
  { write = "INSERT INTO inventory_adjustments (sku, delta) VALUES ('checkout-' || :worker, -1)" },
]
"""


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[runreport.ReportHeader, Analysis]]:
    """The issue's report (upgrade-deadlock: group names up to 32 characters, waiter and holder
    alike for 17) and one with longer names still, each run once."""
    out = {}
    for scenario in (load_scenario("upgrade-deadlock"), parse_scenario(LONG_NAMES)):
        result = run_scenario(scenario)
        analysis = analyze(result.events)
        assert analysis.findings and analysis.timeline.waits, scenario.name
        out[scenario.name] = (runreport.run_header(result), analysis)
    return out


def rendered(draw: Callable[[Console], None], width: int) -> str:
    with open(os.devnull, "w") as devnull:
        console = Console(width=width, record=True, color_system=None, file=devnull)
        draw(console)
    return console.export_text()


def report_text(run: tuple[runreport.ReportHeader, Analysis], width: int) -> str:
    header, analysis = run
    return rendered(lambda console: runreport.render(console, header, analysis), width)


def renderable_text(renderable: RenderableType, width: int) -> str:
    return rendered(lambda console: console.print(renderable), width)


# ------------------------------------------------------------------------------- checks


_TOKEN_EDGES = "`'\",;:()[]{}"


def tokens(text: str) -> set[str]:
    """The words of a rendered text, box drawing and punctuation around them removed."""
    return {t.strip(_TOKEN_EDGES) for t in re.split(r"[\s│╭╮╰╯─━┃]+", text)} - {""}


def _mid_word(name: str, at: int) -> bool:
    """A cut of `name` before index `at` splits a word: letters or digits on both sides, and
    not the start of a CamelCase word (ThreadPool|Executor)."""
    if at <= 0 or at >= len(name):
        return False
    before, after = name[at - 1], name[at]
    return before.isalnum() and after.isalnum() and not (before.islower() and after.isupper())


def broken_identifiers(text: str, wide: str, identifiers: Iterable[str]) -> list[str]:
    """Words of `text` that are a piece of an identifier cut mid-word: words the same report
    drawn without a width limit (`wide`) does not have, so prose is never mistaken for one.
    Shortened names (with an ellipsis) are whole by design, and checked elsewhere."""
    known = tokens(wide)
    problems = []
    for token in tokens(text) - known:
        if ELLIPSIS in token or len(token) < 2:
            continue
        for name in identifiers:
            start = name.find(token)
            while start != -1:
                end = start + len(token)
                if token != name and (_mid_word(name, start) or _mid_word(name, end)):
                    problems.append(f"{token!r} is a piece of {name!r}")
                start = name.find(token, start + 1)
    return problems


def too_wide(text: str, width: int) -> list[str]:
    return [line for line in text.splitlines() if cell_len(line) > width]


def identifiers_of(analysis: Analysis) -> set[str]:
    """Pattern ids, group names and worker names: what must never be broken mid-word."""
    names = {f.pattern for f in analysis.findings}
    names |= {g.group for g in analysis.summary.groups}
    names |= {w.waiter.worker for w in analysis.timeline.waits}
    names |= {h.holder.worker for h in analysis.timeline.write_holds}
    return names


def section(text: str, first: str, *ends: str) -> list[str]:
    """The lines from the one starting with `first` to the next starting with any of `ends`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(ends)), len(lines))
    return lines[start:stop]


def shortened_from(label: str, name: str) -> bool:
    """`label` is `name`, or `name` with its middle replaced by an ellipsis (`#N` kept)."""
    if label == name:
        return True
    head, mark, tail = label.partition(ELLIPSIS)
    suffix = re.search(r"#\d+$", name)
    return (
        bool(mark)
        and name.startswith(head)
        and name.endswith(tail)
        and (suffix is None or label.endswith(suffix.group()))
    )


# -------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["upgrade-deadlock", "long-names"])
def test_every_line_fits_and_no_identifier_breaks_mid_word(runs, name: str, width: int) -> None:
    text = report_text(runs[name], width)
    wide = report_text(runs[name], 1000)
    assert too_wide(text, width) == [], text
    assert broken_identifiers(text, wide, identifiers_of(runs[name][1])) == [], text


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["upgrade-deadlock", "long-names"])
def test_a_groups_worker_count_is_never_split(runs, name: str, width: int) -> None:
    # At 80 columns it read `read (2` on one line and `thr)` on the next.
    workers = section(report_text(runs[name], width), "Workers", "Busy events")
    for line in workers:
        for match in re.finditer(r"\(\d+", line):
            assert re.match(r"\(\d+( (thr|proc|coro))?\)", line[match.start() :]), workers


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["upgrade-deadlock", "long-names"])
def test_finding_titles_are_whole_with_their_pattern_and_confidence(
    runs, name: str, width: int
) -> None:
    # At 120 columns `title  (confidence: high)` was cut at the panel's edge; at 80 the title
    # lost its end. The panel's title is now the severity and the pattern id.
    text = report_text(runs[name], width)
    flat = " ".join(text.replace("│", " ").split())
    for finding in runs[name][1].findings:
        title = f"╭─ {finding.severity.upper()} {finding.pattern} ─"
        assert any(line.startswith(title) for line in text.splitlines()), text
        assert f"{finding.title} confidence: {finding.confidence}" in flat
    assert not [line for line in text.splitlines() if line.startswith("╭") and ELLIPSIS in line]
    # The advice's [bracketed] mark is text, not rich markup to be swallowed.
    if any(a.automatic for f in runs[name][1].findings for a in f.advice):
        assert "[--compare-fix re-runs the scenario with this change to verify it]" in flat


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["upgrade-deadlock", "long-names"])
def test_busy_events_show_each_call_on_one_line(runs, name: str, width: int) -> None:
    # At 80 columns the SQL wrapped one word per line.
    lines = section(report_text(runs[name], width), "Busy events", "Worst wait")
    table = [line for line in lines[1:] if line.strip() and not line.strip().startswith("─")]
    header, rows = table[0], table[1:]
    assert header.split()[:2] == ["at", "s"]
    events = [line for line in rows if re.match(r"^\s*\d+\.\d{3}\s", line)]
    calls = [line for line in rows if re.search(r"(^|\s)(begin|read|write|commit|other): ", line)]
    assert len(events) == len(calls) > 0
    # Nothing else: no SQL spilling onto a line of its own.
    assert set(rows) == set(events) | set(calls), rows
    workers = identifiers_of(runs[name][1])
    for line in events:
        who = line.split()[1]
        assert any(shortened_from(who, worker) for worker in workers), line


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["upgrade-deadlock", "long-names"])
def test_timeline_labels_tell_waiter_and_holder_apart(runs, name: str, width: int) -> None:
    # Even at 200 columns both read `read_write_transa…#0`: the labels were cut to 20.
    window = worst_window(runs[name][1].timeline)
    assert window is not None
    lines = section(report_text(runs[name], width), "Worst wait", "█ write lock")
    labelled = [re.match(r"^(\S+)\s+(waiter|holder|waited) ", line) for line in lines]
    shown = [(m.group(1), m.group(2)) for m in labelled if m]
    assert [role for _, role in shown] == [row.role for row in window.rows]
    for (label, _), row in zip(shown, window.rows, strict=True):
        assert shortened_from(label, row.worker), (label, row.worker)
        if width >= 120:  # room for the whole name
            assert label == row.worker
    distinct_workers = {row.worker for row in window.rows}
    assert len({label for label, _ in shown}) == len(distinct_workers)


def test_check_table_keeps_pattern_ids_and_names_whole(tmp_path: Path) -> None:
    # The findings column folded `long-writ / e-transac / tion`.
    scenario_file = tmp_path / "long.toml"
    scenario_file.write_text(LONG_NAMES.replace('"long-names"', '"nightly-batch-vs-checkout"'))
    results = [check_scenario(load_scenario(str(scenario_file)))]
    assert results[0].analysis.pattern_ids
    names = set(results[0].analysis.pattern_ids) | {"nightly-batch-vs-checkout"}
    wide = renderable_text(check_table(results), 1000)
    for width in WIDTHS:
        text = renderable_text(check_table(results), width)
        assert too_wide(text, width) == [], text
        assert broken_identifiers(text, wide, names) == [], text
        for pattern in results[0].analysis.pattern_ids:
            assert pattern in tokens(text)


def test_a_narrower_console_still_shows_the_failure_on_the_timeline(runs) -> None:
    analysis = runs["long-names"][1]
    text = report_text(runs["long-names"], 60)
    lines = section(text, "Worst wait", "█ write lock")
    waiter = next(line for line in lines if " waiter " in line)
    assert cell_len(waiter) <= 60 and "✗" in waiter
    window = worst_window(analysis.timeline)
    assert window is not None and "X" in window.rows[0].cells


def test_shortening_keeps_the_suffix_and_the_end_that_tell_workers_apart() -> None:
    a = ellipsize_middle("read_write_transaction#0", 20)
    b = ellipsize_middle("read_write_transaction_immediate#0", 20)
    assert len(a) == len(b) == 20 and a != b
    assert a.endswith("ansaction#0") and b.endswith("immediate#0")
    assert ellipsize_middle("write#12", 20) == "write#12"


def test_folding_breaks_only_at_separators_and_keeps_the_tail_whole() -> None:
    assert fold_identifier("read_write_transaction_immediate", 12, " (2 thr)") == [
        "read_write_",
        "transaction_",
        "immediate",
        "(2 thr)",
    ]
    assert fold_identifier("ThreadPoolExecutor-0_0", 14, " (1 thr)") == [
        "ThreadPool",
        "Executor-0_0",
        "(1 thr)",
    ]
    assert fold_identifier("read", 12, " (2 thr)") == ["read (2 thr)"]


def test_resampling_keeps_the_strongest_state() -> None:
    assert resample("  rr~~X   ", 5) == " r~X "
    assert resample("W" + " " * 9, 2) == "W "


# A background job keeps the write lock until a request handler, on another thread, has
# given up on it (busy_timeout 100 ms): thread names as long as real ones.
TRACED = """
import sqlite3, sys, threading

db = sys.argv[1]
setup = sqlite3.connect(db)
setup.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)")
setup.commit()
setup.close()
taken, gave_up = threading.Event(), threading.Event()

def nightly_inventory_reconciliation():
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO orders (total) VALUES (1)")
    taken.set()
    gave_up.wait()
    conn.execute("COMMIT")

def checkout_request_handler():
    taken.wait()
    conn = sqlite3.connect(db, timeout=0.1)
    try:
        conn.execute("INSERT INTO orders (total) VALUES (2)")
    except sqlite3.OperationalError as exc:
        print("checkout:", exc)
    gave_up.set()

threads = [
    threading.Thread(target=f, name=f.__name__)
    for f in (nightly_inventory_reconciliation, checkout_request_handler)
]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_trace_reads_well_at_80_columns(tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text(TRACED)
    log, report = tmp_path / "trace.jsonl", tmp_path / "report.json"
    env = {**os.environ, "COLUMNS": "80"}
    lockprobe = [sys.executable, "-m", "sqlite_lockprobe"]
    proc = subprocess.run(
        [*lockprobe, "trace", "--events", str(log), "--json", str(report)]
        + ["--", sys.executable, program.name, "app.db"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "checkout: database is locked" in proc.stdout
    text = proc.stdout[proc.stdout.index("lockprobe · trace") :]
    findings = json.loads(report.read_text())["findings"]
    assert findings
    wide = subprocess.run(
        [*lockprobe, "report", str(log)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "1000"},
    ).stdout
    names = {f["pattern"] for f in findings}
    names |= {"nightly_inventory_reconciliation", "checkout_request_handler"}
    assert too_wide(text, 80) == [], text
    assert broken_identifiers(text, wide, names) == [], text
    lines = text.splitlines()
    for finding in findings:
        title = f"╭─ {finding['severity'].upper()} {finding['pattern']} ─"
        assert any(line.startswith(title) for line in lines), text
    rows = section(text, "Worst wait", "█ write lock")
    labels = dict(
        (m.group(2), m.group(1))
        for m in (re.match(r"^(\S+)\s+(waiter|holder) ", line) for line in rows)
        if m
    )
    assert shortened_from(labels["waiter"], "checkout_request_handler")
    assert shortened_from(labels["holder"], "nightly_inventory_reconciliation")
