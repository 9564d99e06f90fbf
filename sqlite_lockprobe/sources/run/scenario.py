"""Scenarios: a database set-up and groups of workers, each running a list of steps.

Loaded from TOML (docs/scenario-format.md) and validated strictly: an unknown key, a wrong
type or an impossible value is rejected with the file, the key and what was expected.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sqlite_lockprobe.diagnose.registry import pattern_ids
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.sources.run.thresholds import Thresholds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

JOURNAL_MODES = ("delete", "truncate", "persist", "wal")
SYNCHRONOUS = ("off", "normal", "full", "extra")
TRANSACTION_MODES = ("deferred", "immediate", "exclusive", "autocommit")
BEGIN_MODES = ("deferred", "immediate", "exclusive")
KINDS = ("thread", "process", "coroutine")
CONNECTION_POLICIES = ("per-worker", "shared", "per-iteration")
ON_ERROR = ("rollback", "continue", "stop")
STEP_ACTIONS = (
    "begin",
    "read",
    "write",
    "open_read",
    "close_reads",
    "sleep",
    "commit",
    "rollback",
    "signal",
    "wait",
    "crash",
)
# Steps with SQL, compiled with EXPLAIN before the run.
SQL_ACTIONS = ("read", "write", "open_read")

# Refuse sizes that would only exhaust the machine; a real reproduction never needs more.
MAX_WORKERS_PER_GROUP = 5000
MAX_WORKERS_TOTAL = 10000
MAX_PROCESSES = 64
MAX_REPEAT = 10_000_000
MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class Step:
    """One thing a worker does: `sql` for read/write/open_read, `seconds` for sleep, `mode` for
    begin, `event` for signal/wait (a name; "done:GROUP" is set when every worker of GROUP
    ended). open_read steps a query once and keeps its cursor open (an unfinished statement)
    until close_reads or the end of the pass."""

    action: str
    sql: str | None = None
    seconds: float | None = None
    mode: str | None = None
    event: str | None = None

    def describe(self) -> str:
        if self.action in SQL_ACTIONS:
            return f"{self.action} {self.sql}"
        if self.action == "sleep":
            return f"sleep {self.seconds}s"
        if self.action == "begin":
            return f"begin {self.mode or ''}".strip()
        if self.action in ("signal", "wait"):
            return f"{self.action} {self.event}"
        return self.action


@dataclass(frozen=True)
class DatabaseSettings:
    """How the database is prepared, and how every connection is opened unless a group
    says otherwise. transaction_mode maps to Python's isolation_level (autocommit = None)."""

    journal_mode: str = "delete"
    synchronous: str | None = None
    busy_timeout_ms: int = 5000
    transaction_mode: str = "deferred"
    wal_autocheckpoint: int | None = None
    schema: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    shared_cache: bool = False


@dataclass(frozen=True)
class Group:
    """Workers of one kind running the same steps. `repeat` passes over the steps, or for
    `duration` seconds; `start_after` and `stagger` (per worker index) shape the contention;
    `blocking` (coroutines only) runs sqlite calls on the event loop itself, as FastAPI's
    async endpoints or Django's async ORM do, instead of on a thread per connection
    (aiosqlite's way)."""

    name: str
    kind: str
    count: int
    steps: tuple[Step, ...]
    connection: str = "per-worker"
    repeat: int | None = None
    duration: float | None = None
    start_after: float = 0.0
    stagger: float = 0.0
    blocking: bool = True
    busy_timeout_ms: int | None = None
    transaction_mode: str | None = None
    on_error: str = "rollback"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    database: DatabaseSettings
    groups: tuple[Group, ...]
    seed: str | None = None
    expect: tuple[str, ...] | None = None
    max_seconds: float = 120.0
    source: str = "<memory>"
    check: Thresholds = field(default_factory=Thresholds)

    def group_timeout_ms(self, group: Group) -> int:
        return (
            self.database.busy_timeout_ms
            if group.busy_timeout_ms is None
            else group.busy_timeout_ms
        )

    def group_transaction_mode(self, group: Group) -> str:
        return group.transaction_mode or self.database.transaction_mode

    def with_database(self, **changes: Any) -> Scenario:
        return replace(self, database=replace(self.database, **changes))


# ---------------------------------------------------------------- loading


def builtin_dir() -> Path:
    """The built-in scenarios: installed, the package data of `sqlite_lockprobe.scenarios`
    (setup.py maps it from the checkout's top-level `scenarios/`); in a checkout, that folder."""
    package = Path(str(resources.files("sqlite_lockprobe")))
    installed = package / "scenarios"
    return installed if installed.is_dir() else package.parent / "scenarios"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        candidate = builtin_dir() / f"{name_or_path}.toml"
        if not candidate.exists():
            known = ", ".join(builtin_names())
            raise LockprobeError(
                f"no scenario file or built-in scenario named {name_or_path!r} (built-in: {known})"
            )
        path = candidate
    if path.is_dir():
        raise LockprobeError(f"{path}: is a directory, not a scenario file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockprobeError(f"{path}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockprobeError(f"{path}: cannot read scenario file ({exc})") from None
    return parse_scenario(text, source=str(path), default_name=path.stem)


def parse_scenario(text: str, source: str = "<memory>", default_name: str = "scenario") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockprobeError(f"{source}: not valid TOML: {exc}") from None
    return _Validator(source).scenario(data, default_name)


class _Validator:
    """Turns parsed TOML into a Scenario, naming the file and key in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> LockprobeError:
        return LockprobeError(f"{self.source}: {key}: {message}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_given(value)}")
        return value

    def no_unknown(self, table: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key (expected one of: {', '.join(allowed)})")

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_given(value)}")
        return value

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        text = self.string(value, key).lower()
        if text not in options:
            raise self.fail(
                key, f"expected one of {', '.join(options)}, got {_given(value, typed=True)}"
            )
        return text

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected a whole number, got {_given(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"expected a number from {low} to {high}, got {value}")
        return value

    def number(self, value: Any, key: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number, got {_given(value)}")
        if not low <= value <= high:  # also rejects nan
            raise self.fail(key, f"expected a number from {low:g} to {high:g}, got {value}")
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_given(value)}")
        return value

    def sql_list(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of SQL strings, got {_given(value)}")
        return tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))

    # -- the parts

    def scenario(self, data: dict[str, Any], default_name: str) -> Scenario:
        self.no_unknown(
            data,
            "",
            ("name", "description", "seed", "expect", "max_seconds", "database", "group", "check"),
        )
        name = self.string(data.get("name", default_name), "name")
        description = self.string(data.get("description", ""), "description")
        seed = self.string(data["seed"], "seed") if "seed" in data else None
        expect = None
        if "expect" in data:
            raw = data["expect"]
            if not isinstance(raw, list):
                raise self.fail("expect", f"expected a list of pattern ids, got {_given(raw)}")
            expect = tuple(sorted(self.string(v, f"expect[{i}]") for i, v in enumerate(raw)))
        max_seconds = self.number(data.get("max_seconds", 120.0), "max_seconds", 0.1, MAX_SECONDS)
        database = self.database(self.table(data.get("database", {}), "database"))
        raw_groups = data.get("group")
        if raw_groups is None:
            raise self.fail("group", "a scenario needs at least one [[group]] of workers")
        if not isinstance(raw_groups, list) or not raw_groups:
            raise self.fail(
                "group", f"expected one or more [[group]] tables, got {_given(raw_groups)}"
            )
        groups = tuple(self.group(g, f"group[{i}]") for i, g in enumerate(raw_groups))
        self.check_groups(groups)
        check = self.check(self.table(data.get("check", {}), "check"))
        return Scenario(
            name=name,
            description=description,
            database=database,
            groups=groups,
            seed=seed,
            expect=expect,
            max_seconds=max_seconds,
            source=self.source,
            check=check,
        )

    def database(self, t: dict[str, Any]) -> DatabaseSettings:
        allowed = (
            "journal_mode",
            "synchronous",
            "busy_timeout_ms",
            "transaction_mode",
            "wal_autocheckpoint",
            "schema",
            "setup",
            "shared_cache",
        )
        self.no_unknown(t, "database", allowed)
        return DatabaseSettings(
            journal_mode=self.choice(
                t.get("journal_mode", "delete"), "database.journal_mode", JOURNAL_MODES
            ),
            synchronous=(
                self.choice(t["synchronous"], "database.synchronous", SYNCHRONOUS)
                if "synchronous" in t
                else None
            ),
            busy_timeout_ms=self.integer(
                t.get("busy_timeout_ms", 5000), "database.busy_timeout_ms", 0, 3_600_000
            ),
            transaction_mode=self.choice(
                t.get("transaction_mode", "deferred"),
                "database.transaction_mode",
                TRANSACTION_MODES,
            ),
            wal_autocheckpoint=(
                self.integer(t["wal_autocheckpoint"], "database.wal_autocheckpoint", 0, 10_000_000)
                if "wal_autocheckpoint" in t
                else None
            ),
            schema=self.sql_list(t.get("schema", []), "database.schema"),
            setup=self.sql_list(t.get("setup", []), "database.setup"),
            shared_cache=self.boolean(t.get("shared_cache", False), "database.shared_cache"),
        )

    def check(self, t: dict[str, Any]) -> Thresholds:
        """The `[check]` table: limits for `lockprobe check` (docs/check.md)."""
        self.no_unknown(t, "check", ("max_busy_errors", "max_p99_wait_ms", "forbid", "expect"))
        return Thresholds(
            max_busy_errors=(
                self.integer(t["max_busy_errors"], "check.max_busy_errors", 0, MAX_REPEAT)
                if "max_busy_errors" in t
                else None
            ),
            max_p99_wait_ms=(
                self.number(t["max_p99_wait_ms"], "check.max_p99_wait_ms", 0.0, MAX_SECONDS * 1000)
                if "max_p99_wait_ms" in t
                else None
            ),
            forbid=self.patterns(t["forbid"], "check.forbid", False) if "forbid" in t else None,
            expect=self.patterns(t["expect"], "check.expect", True) if "expect" in t else None,
        )

    def patterns(self, value: Any, key: str, allow_healthy: bool) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of pattern ids, got {_given(value)}")
        names = [self.string(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return pattern_ids(names, f"{self.source}: {key}", allow_healthy)

    def group(self, raw: Any, key: str) -> Group:
        t = self.table(raw, key)
        allowed = (
            "name",
            "kind",
            "count",
            "steps",
            "connection",
            "repeat",
            "duration",
            "start_after",
            "stagger",
            "blocking",
            "busy_timeout_ms",
            "transaction_mode",
            "on_error",
        )
        self.no_unknown(t, key, allowed)
        if "name" not in t:
            raise self.fail(f"{key}.name", "every group needs a name")
        name = self.string(t["name"], f"{key}.name")
        if not name or ":" in name:
            raise self.fail(
                f"{key}.name",
                f"expected a non-empty name without ':', got {_given(name, typed=True)}",
            )
        kind = self.choice(t.get("kind", "thread"), f"{key}.kind", KINDS)
        high = MAX_PROCESSES if kind == "process" else MAX_WORKERS_PER_GROUP
        count = self.integer(t.get("count", 1), f"{key}.count", 1, high)
        if "steps" not in t:
            raise self.fail(f"{key}.steps", "every group needs a list of steps")
        raw_steps = t["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            raise self.fail(
                f"{key}.steps", f"expected a non-empty list of steps, got {_given(raw_steps)}"
            )
        steps = tuple(self.step(s, f"{key}.steps[{i}]") for i, s in enumerate(raw_steps))
        for i, s in enumerate(steps):
            if s.action == "crash" and kind != "process":
                raise self.fail(
                    f"{key}.steps[{i}].crash",
                    "only a process group can crash (the step kills the worker's process)",
                )
        connection = self.choice(
            t.get("connection", "per-worker"), f"{key}.connection", CONNECTION_POLICIES
        )
        if kind == "process" and connection == "shared":
            raise self.fail(f"{key}.connection", "a connection cannot be shared between processes")
        repeat = (
            self.integer(t["repeat"], f"{key}.repeat", 1, MAX_REPEAT) if "repeat" in t else None
        )
        duration = (
            self.number(t["duration"], f"{key}.duration", 0.001, MAX_SECONDS)
            if "duration" in t
            else None
        )
        if repeat is not None and duration is not None:
            raise self.fail(key, "give either repeat or duration, not both")
        if repeat is None and duration is None:
            repeat = 1
        blocking = self.boolean(t.get("blocking", True), f"{key}.blocking")
        if "blocking" in t and kind != "coroutine":
            raise self.fail(f"{key}.blocking", "only coroutine groups have this setting")
        return Group(
            name=name,
            kind=kind,
            count=count,
            steps=steps,
            connection=connection,
            repeat=repeat,
            duration=duration,
            start_after=self.number(
                t.get("start_after", 0.0), f"{key}.start_after", 0.0, MAX_SECONDS
            ),
            stagger=self.number(t.get("stagger", 0.0), f"{key}.stagger", 0.0, MAX_SECONDS),
            blocking=blocking,
            busy_timeout_ms=(
                self.integer(t["busy_timeout_ms"], f"{key}.busy_timeout_ms", 0, 3_600_000)
                if "busy_timeout_ms" in t
                else None
            ),
            transaction_mode=(
                self.choice(t["transaction_mode"], f"{key}.transaction_mode", TRANSACTION_MODES)
                if "transaction_mode" in t
                else None
            ),
            on_error=self.choice(t.get("on_error", "rollback"), f"{key}.on_error", ON_ERROR),
        )

    def step(self, raw: Any, key: str) -> Step:
        if isinstance(raw, str):
            if raw not in ("begin", "commit", "rollback"):
                raise self.fail(
                    key,
                    f"expected begin, commit, rollback or a table, got {_given(raw, typed=True)}",
                )
            return Step(action=raw)
        t = self.table(raw, key)
        actions = [name for name in t if name in STEP_ACTIONS]
        self.no_unknown(t, key, STEP_ACTIONS)
        if len(actions) != 1:
            given = f"{len(actions)}: {', '.join(actions)}" if actions else "none"
            raise self.fail(
                key, f"expected exactly one action ({', '.join(STEP_ACTIONS)}), got {given}"
            )
        action = actions[0]
        value = t[action]
        where = f"{key}.{action}"
        if action in SQL_ACTIONS:
            sql = self.string(value, where).strip()
            if not sql:
                raise self.fail(
                    where, f"expected an SQL statement, got {_given(value, typed=True)}"
                )
            return Step(action=action, sql=sql)
        if action == "sleep":
            return Step(action=action, seconds=self.number(value, where, 0.0, MAX_SECONDS))
        if action == "begin":
            if value is True:
                return Step(action=action)
            return Step(action=action, mode=self.choice(value, where, BEGIN_MODES))
        if action in ("commit", "rollback", "crash", "close_reads"):
            if value is not True:
                raise self.fail(where, f"expected true, got {_given(value)}")
            return Step(action=action)
        name = self.string(value, where)
        if not name:
            raise self.fail(where, f"expected an event name, got {_given(value, typed=True)}")
        return Step(action=action, event=name)

    def check_groups(self, groups: tuple[Group, ...]) -> None:
        names = [g.name for g in groups]
        for name in names:
            if names.count(name) > 1:
                raise self.fail("group", f"two groups are named {name!r}")
        if sum(g.count for g in groups) > MAX_WORKERS_TOTAL:
            raise self.fail("group", f"more than {MAX_WORKERS_TOTAL} workers in all")
        if sum(g.count for g in groups if g.kind == "process") > MAX_PROCESSES:
            raise self.fail("group", f"more than {MAX_PROCESSES} worker processes in all")
        signalled = {s.event for g in groups for s in g.steps if s.action == "signal"}
        for i, g in enumerate(groups):
            for j, s in enumerate(g.steps):
                if s.action != "wait" or s.event in signalled:
                    continue
                assert s.event is not None
                if s.event.startswith("done:") and s.event[5:] in names:
                    if s.event[5:] == g.name:
                        raise self.fail(
                            f"group[{i}].steps[{j}].wait", "a group cannot wait for its own end"
                        )
                    continue
                raise self.fail(
                    f"group[{i}].steps[{j}].wait",
                    f"no step signals {s.event!r} (and it is not done:GROUP of a known group)",
                )


def event_names(scenario: Scenario) -> list[str]:
    """Every signal name a run must create: signalled events and the done:GROUP ones."""
    names = {s.event for g in scenario.groups for s in g.steps if s.event}
    names.update(f"done:{g.name}" for g in scenario.groups)
    return sorted(n for n in names if n)


def _given(value: Any, typed: bool = False) -> str:
    """The value a scenario gave, as it was written in TOML, so the message names it: `2.5`,
    `"3" (a string)`, `[1, 2] (a list)`; long values are cut. `typed`: the value has the type
    asked for (a string that is not one of the choices), so its type goes unsaid."""
    text = _toml(value)
    if len(text) > _GIVEN_WIDTH:
        text = text[: _GIVEN_WIDTH - 1] + "…"
    if typed:
        return text
    kinds = {
        str: "a string",
        list: "a list",
        dict: "a table",
        datetime.datetime: "a date and time",
        datetime.date: "a date",
        datetime.time: "a time",
    }
    kind = kinds.get(type(value))
    return f"{text} ({kind})" if kind else text


_GIVEN_WIDTH = 40


def _toml(value: Any) -> str:
    """`value` in TOML's own spelling (true, "text", [1, 2], {a = 1})."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return str(value)
