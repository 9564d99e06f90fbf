"""`lockprobe check`: run scenarios and hold each run to its limits, for CI.

Which scenarios (`load_targets`), which limits apply to each (`effective_thresholds`: the
scenario's `expect`, then its `[check]` table, then the command line), one run and its verdict
(`check_scenario`), and the verdict alone from an analysis (`evaluate`, no SQLite needed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlite_lockprobe.diagnose.analysis import Analysis, analyze
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.run.runner import Progress, RunResult, run_scenario
from sqlite_lockprobe.sources.run.scenario import Scenario, builtin_names, load_scenario
from sqlite_lockprobe.sources.run.thresholds import Thresholds

# Names of the checks, as they appear in the table, the JUnit test cases and the JSON.
COMPLETED = "completed"
MAX_BUSY_ERRORS = "max-busy-errors"
MAX_P99_WAIT = "max-p99-wait"
FORBID = "forbid"
EXPECT = "expect"


@dataclass(frozen=True)
class ThresholdResult:
    """One limit applied to one run: the limit, what the run measured, and the verdict.
    `message` names the measured value, so a CI log line alone says what went wrong."""

    name: str
    limit: object
    measured: object
    passed: bool
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "passed": self.passed,
            "limit": self.limit,
            "measured": self.measured,
            "message": self.message,
        }


@dataclass(frozen=True)
class RunOutcome:
    """How the run itself went, apart from its findings: what `completed` checks."""

    wall_seconds: float
    interrupted: bool = False
    crashes: tuple[str, ...] = ()
    failed_processes: tuple[str, ...] = ()

    @classmethod
    def of(cls, result: RunResult, analysis: Analysis) -> RunOutcome:
        return cls(
            wall_seconds=result.wall_seconds,
            interrupted=result.interrupted,
            crashes=analysis.summary.total.crashes,
            failed_processes=tuple(
                f"{name} exited with {code}"
                for name, code in sorted(result.process_exit_codes.items())
                if code != 0
            ),
        )


@dataclass(frozen=True)
class CheckResult:
    """One scenario's check: the limits applied, each verdict, and the analysis behind them."""

    scenario: Scenario
    thresholds: Thresholds
    results: tuple[ThresholdResult, ...]
    analysis: Analysis
    outcome: RunOutcome
    db_note: str

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[ThresholdResult]:
        return [r for r in self.results if not r.passed]


def load_targets(targets: Sequence[str]) -> list[Scenario]:
    """Every scenario named by `targets` (built-in names, .toml files, directories of .toml
    files), all validated before anything runs; no targets: every built-in scenario."""
    names: list[str] = []
    for target in targets or builtin_names():
        path = Path(target)
        if path.is_dir():
            files = sorted(str(p) for p in path.glob("*.toml") if p.is_file())
            if not files:
                raise LockprobeError(f"{path}: directory has no .toml scenario files")
            names.extend(files)
        else:
            names.append(target)
    return [load_scenario(name) for name in names]


def effective_thresholds(scenario: Scenario, overrides: Thresholds) -> Thresholds:
    """The scenario's own `expect`, overridden by its `[check]` table, overridden by the
    command line, limit by limit."""
    own = Thresholds(expect=scenario.expect)
    return own.overridden_by(scenario.check).overridden_by(overrides)


def check_scenario(
    scenario: Scenario,
    overrides: Thresholds | None = None,
    db: str | os.PathLike[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> CheckResult:
    """Run `scenario` (on a copy of `db` when given: never on `db` itself) and apply its limits."""
    if db is not None:
        _require_database_to_copy(Path(db))
    thresholds = effective_thresholds(scenario, overrides or Thresholds())
    result = run_scenario(scenario, db=db, progress=progress)
    analysis = analyze(result.events)
    outcome = RunOutcome.of(result, analysis)
    return CheckResult(
        scenario=scenario,
        thresholds=thresholds,
        results=evaluate(thresholds, analysis, outcome),
        analysis=analysis,
        outcome=outcome,
        db_note=result.db_note,
    )


def _require_database_to_copy(path: Path) -> None:
    # run_scenario creates a missing or empty file in place; check must never write there.
    if not path.is_file():
        raise LockprobeError(f"{path}: no such database file")
    if path.stat().st_size == 0:
        raise LockprobeError(f"{path}: empty file, not a database to copy")


def evaluate(
    thresholds: Thresholds, analysis: Analysis, outcome: RunOutcome
) -> tuple[ThresholdResult, ...]:
    """Every limit applied to one analysed run; `completed` always comes first."""
    results = [_completed(outcome)]
    total = analysis.summary.total
    found = analysis.pattern_ids
    if thresholds.max_busy_errors is not None:
        limit = thresholds.max_busy_errors
        n = total.busy_errors
        results.append(
            ThresholdResult(
                MAX_BUSY_ERRORS,
                limit,
                n,
                n <= limit,
                f"{n} call(s) failed with SQLITE_BUSY (limit {limit})",
            )
        )
    if thresholds.max_p99_wait_ms is not None:
        limit_ms = thresholds.max_p99_wait_ms
        p99 = round(total.waits.p99_ms, 3)
        results.append(
            ThresholdResult(
                MAX_P99_WAIT,
                limit_ms,
                p99,
                p99 <= limit_ms,
                f"p99 busy wait {p99:.1f} ms over {total.waits.count} wait(s) "
                f"(limit {limit_ms:g} ms)",
            )
        )
    if thresholds.forbid is not None:
        bad = sorted(set(found) & set(thresholds.forbid))
        results.append(
            ThresholdResult(
                FORBID,
                list(thresholds.forbid),
                found,
                not bad,
                f"forbidden pattern(s) found: {', '.join(bad)}"
                if bad
                else f"none of {', '.join(thresholds.forbid) or 'nothing'} found",
            )
        )
    if thresholds.expect is not None:
        want = sorted(thresholds.expect)
        results.append(
            ThresholdResult(
                EXPECT,
                want,
                found,
                found == want,
                f"expected {_patterns(want)}, found {_patterns(found)}",
            )
        )
    return tuple(results)


def _completed(outcome: RunOutcome) -> ThresholdResult:
    problems = list(outcome.crashes) + list(outcome.failed_processes)
    if outcome.interrupted:
        problems.insert(0, "interrupted")
    message = (
        "; ".join(problems)
        if problems
        else f"every worker finished, in {outcome.wall_seconds:.2f} s"
    )
    return ThresholdResult(COMPLETED, "no crashed worker", len(problems), not problems, message)


def _patterns(ids: Sequence[str]) -> str:
    return ", ".join(ids) if ids else "healthy"
