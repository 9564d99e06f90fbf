"""The pytest plugin when it is on (pytest_plugin.py registers it for `--lockprobe`).

One recorder (recorder.py) records the whole session from its start, so connections opened by
session fixtures, or Django's test database connection, are probed like the tests' own. Each
test's window is its setup, call and teardown: the ring forgets what came before it, and the
diagnosis of what is left is the test's. A test is judged twice: setup and call when its call
report is made (a failure there is the test's FAILED), and the whole window when its teardown
report is made (what only the teardown showed fails the teardown: pytest's ERROR).

With pytest-xdist each worker records its own tests and hands its findings to the controller
in `workeroutput`; the controller, which runs no test, records nothing and reports them all.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from sqlite_lockprobe.diagnose.registry import pattern_ids
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.recorder import Recorder
from sqlite_lockprobe.report.jsonreport import output_problem, write_json_atomically
from sqlite_lockprobe.report.pytestreport import (
    FindingInTest,
    RecordedTest,
    failure_text,
    pytest_document,
    summary_lines,
    summary_title,
)

if TYPE_CHECKING:
    from sqlite_lockprobe.diagnose.analysis import Analysis

ANY = "any"
WORKER_OUTPUT_KEY = "lockprobe"


class LockprobeWarning(pytest.PytestWarning):
    """A finding in a test run with --lockprobe-warn."""


@dataclass(frozen=True)
class FailOn:
    """Which findings fail a test: these patterns (any severity), any finding, or by default
    any finding of severity error."""

    patterns: tuple[str, ...] | None = None
    any_finding: bool = False

    @classmethod
    def parse(cls, values: Iterable[str] | None) -> FailOn:
        if not values:
            return cls()
        ids = [v.strip() for value in values for v in value.split(",") if v.strip()]
        if ANY in ids:
            return cls(any_finding=True)
        try:
            return cls(patterns=pattern_ids(ids, "--lockprobe-fail-on", allow_healthy=False))
        except LockprobeError as exc:
            raise pytest.UsageError(f"{exc} (or '{ANY}')") from exc

    def fails(self, finding: Finding) -> bool:
        if self.any_finding:
            return True
        if self.patterns is not None:
            return finding.pattern in self.patterns
        return finding.severity == "error"


def expected_patterns(item: pytest.Item) -> tuple[str, ...]:
    """The patterns `@pytest.mark.lockprobe(expect=...)` names (a list, or one id); a
    UsageError naming the test and the id when one is unknown."""
    names: list[str] = []
    for marker in item.iter_markers("lockprobe"):
        expect = marker.kwargs.get("expect", marker.args[0] if marker.args else ())
        names += [expect] if isinstance(expect, str) else list(expect)
    if not names:
        return ()
    try:
        return pattern_ids(names, f"{item.nodeid}: @pytest.mark.lockprobe(expect=...)", False)
    except LockprobeError as exc:
        raise pytest.UsageError(str(exc)) from exc


@dataclass
class TestWindow:
    """The test being run: what it expects, and which patterns its call report showed."""

    item: pytest.Item
    expect: tuple[str, ...]
    reported: set[str] = field(default_factory=set)
    problem: str | None = None  # the marker's unknown pattern id (xdist workers)
    # The call report's diagnosis and how many events it saw: teardown reuses it when no
    # event came since (most tests), rather than diagnosing the same events again.
    judged: tuple[int, Analysis | None] | None = None


class LockprobePlugin:
    """Records the session, judges each test, reports at the end (see the module)."""

    def __init__(self, fail_on: FailOn, warn: bool, json_path: str | None, worker: bool) -> None:
        self.fail_on = fail_on
        self.warn = warn
        self.json_path = json_path
        self.worker = worker
        self.recorder: Recorder | None = None
        self.window: TestWindow | None = None
        self.findings: list[FindingInTest] = []
        self.recorded: list[RecordedTest] = []
        self.notes: list[str] = []

    @classmethod
    def from_config(cls, config: pytest.Config) -> LockprobePlugin:
        """The options checked before anything runs: pattern ids, the JSON file's directory."""
        fail_on = FailOn.parse(config.getoption("lockprobe_fail_on"))
        json_path = config.getoption("lockprobe_json")
        worker = hasattr(config, "workerinput")
        if json_path and not worker:
            problem = output_problem(json_path)
            if problem:
                raise pytest.UsageError(f"--lockprobe-json: {problem}")
        return cls(fail_on, bool(config.getoption("lockprobe_warn")), json_path, worker)

    # ------------------------------------------------------------------ session

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.worker:
            return  # an xdist worker's usage error is lost: its test fails instead
        for item in items:
            expected_patterns(item)  # unknown ids stop the session before a test runs

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if session.config.pluginmanager.has_plugin("dsession"):
            return  # xdist's controller: the workers record
        try:
            self.recorder = Recorder().start()
        except LockprobeError as exc:
            raise pytest.UsageError(f"--lockprobe: {exc}") from exc

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.recorder is not None:
            self.recorder.stop()
        if self.worker:
            workeroutput = session.config.workeroutput  # type: ignore[attr-defined]
            workeroutput[WORKER_OUTPUT_KEY] = json.dumps(
                {
                    "findings": [f.to_json() for f in self.findings],
                    "tests": [t.to_json() for t in self.recorded],
                }
            )
        elif self.json_path:
            document = pytest_document(self.findings, self.recorded, self.notes)
            try:
                write_json_atomically(self.json_path, document)
            except LockprobeError as exc:
                self.notes.append(f"--lockprobe-json: {exc}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist's controller: a worker finished; take its findings."""
        output = getattr(node, "workeroutput", None) or {}
        if WORKER_OUTPUT_KEY not in output:
            name = getattr(node, "gateway", None)
            self.notes.append(f"worker {getattr(name, 'id', node)} sent no lockprobe results")
            return
        data = json.loads(output[WORKER_OUTPUT_KEY])
        self.findings += [FindingInTest.from_json(f) for f in data["findings"]]
        self.recorded += [RecordedTest.from_json(t) for t in data["tests"]]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.worker:
            return
        terminalreporter.write_sep("=", summary_title(self.findings, self.recorded))
        for line in summary_lines(self.findings):
            terminalreporter.write_line(line)
        for note in self.notes:
            terminalreporter.write_line(f"note: {note}")

    # ----------------------------------------------------------------- per test

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        if self.recorder is not None:
            self.recorder.forget()  # what ran before this test is not its own
            try:
                self.window = TestWindow(item, expected_patterns(item))
            except pytest.UsageError as exc:
                self.window = TestWindow(item, (), problem=str(exc))
        try:
            yield
        finally:
            self.window = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Generator[None, Any, None]:
        outcome = yield
        window = self.window
        if window is None or window.item is not item:
            return
        report: pytest.TestReport = outcome.get_result()
        if window.problem is not None:
            if report.when == "setup" and report.passed:
                report.outcome = "failed"
                report.longrepr = window.problem
        elif report.when == "call":
            self._judge_call(window, report)
        elif report.when == "teardown":
            self._judge_teardown(window, report)

    def _analysis(self, window: TestWindow) -> Analysis | None:
        """The diagnosis of the test's window so far; None when it made no sqlite3 call."""
        recorder = self.recorder
        assert recorder is not None
        kept = recorder.kept
        if window.judged is not None and window.judged[0] == kept < recorder.max_events:
            return window.judged[1]
        analysis = recorder.analysis() if kept else None
        window.judged = (kept, analysis)
        return analysis

    def _judge_call(self, window: TestWindow, report: pytest.TestReport) -> None:
        """Setup and call: the findings that fail the test, the expected patterns missing."""
        if report.skipped or hasattr(report, "wasxfail"):
            return
        analysis = self._analysis(window)
        findings = analysis.findings if analysis else []
        window.reported = {f.pattern for f in findings}
        failing = [f for f in findings if f.pattern not in window.expect and self.fail_on.fails(f)]
        missing = [p for p in window.expect if p not in window.reported]
        notes = analysis.summary.notes if analysis else ()
        self._fail(window.item, report, failing, missing, notes)

    def _judge_teardown(self, window: TestWindow, report: pytest.TestReport) -> None:
        """The whole window: the test's findings as reported, and what only teardown showed."""
        analysis = self._analysis(window)
        if analysis is None:
            return
        nodeid = window.item.nodeid
        findings = analysis.findings
        self.findings += [FindingInTest.of(nodeid, f, f.pattern in window.expect) for f in findings]
        self.recorded.append(
            RecordedTest(
                nodeid,
                analysis.summary.total.calls,
                tuple(analysis.pattern_ids),
                tuple(analysis.summary.notes),
            )
        )
        failing = [
            f
            for f in findings
            if f.pattern not in window.reported
            and f.pattern not in window.expect
            and self.fail_on.fails(f)
        ]
        self._fail(window.item, report, failing, [], analysis.summary.notes)

    def _fail(
        self,
        item: pytest.Item,
        report: pytest.TestReport,
        failing: list[Finding],
        missing: list[str],
        notes: Iterable[str],
    ) -> None:
        """Fail the report (or, with --lockprobe-warn, warn about the findings)."""
        if self.warn and failing:
            text = failure_text(failing, [], notes)
            try:
                item.warn(LockprobeWarning(text))
                failing = []
            except Warning:  # -W error: the user asked for warnings to fail
                pass
        if not failing and not missing:
            return
        text = failure_text(failing, missing, notes)
        if report.failed:
            report.sections.append((f"lockprobe ({report.when})", text))
            return
        report.outcome = "failed"
        report.longrepr = text
