"""An event log (trace, run or record()) turned into a scenario that reproduces it.

Each worker's calls become steps, split into transactions and folded into the shortest
repeating pass; workers of the same shape become one group with a count. Gaps between calls
become think times (`sleep`, the median per step). The first failed (else waited) call is
lined up again with `signal`/`wait` steps placed where the log shows the order: the holder
signals once it took its lock, the waiter waits for that before the call; the waiter signals
first when its transaction had already read, and the holder waits for the waiter's group to
end before releasing when it did so in the log; groups that started after that moment wait
for it too. No value is copied: SQL keeps its shape only (sqltemplate.py), the schema comes
from the database file (read-only) or the CREATE statements the log shows, and rows are
generated. docs/scenario-format.md ("From a trace") says what is kept and what is not.
"""

from __future__ import annotations

import datetime
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.databases import journal_mode_set_by
from sqlite_lockprobe.sources.run.scenario import JOURNAL_MODES, MAX_PROCESSES, MAX_SECONDS, _toml
from sqlite_lockprobe.workflows.scenario_schema import schema_for
from sqlite_lockprobe.workflows.sqltemplate import generalise_sql

# Gaps shorter than this are the program's own overhead, not think time.
THINK_TIME_MIN_S = 0.001
# Start offsets below this are the workers starting together.
START_OFFSET_MIN_S = 0.005
# SQLite's result codes that mean a lock was refused (BUSY, LOCKED).
LOCK_ERRORS = (5, 6)
SQLITE_LOCKED_SHAREDCACHE = 262

Step = tuple[str, Any]  # ("write", sql), ("begin", "immediate"), ("commit", None)...

_BEGIN = re.compile(r"\s*BEGIN\b(?:\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?", re.IGNORECASE)
_FIRST_WORD = re.compile(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(\w+)", re.DOTALL)
_SQL_STEPS = ("read", "write", "open_read")
_READ_WORDS = frozenset(("SELECT", "VALUES", "EXPLAIN"))
_SCHEMA_WORDS = frozenset(("CREATE", "DROP", "ALTER"))
_SETTING_WORDS = frozenset(("PRAGMA", "ANALYZE", "VACUUM", "REINDEX", "ATTACH", "DETACH"))
_WRITE_WORDS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_PRAGMA_VALUE = re.compile(r"\s*PRAGMA\s+(?:main\.)?(\w+)\s*(?:=|\()\s*['\"]?(\w+)", re.IGNORECASE)


@dataclass
class _Call:
    """One call of the chosen database's log, as a step and the facts the shaping needs."""

    t0: int
    t1: int
    worker: str
    conn: str
    step: Step
    in_txn: bool
    err: int | None
    waited: bool
    thread: Any


@dataclass
class _Worker:
    name: str
    group: str
    kind: str
    thread: Any = None
    calls: list[_Call] = field(default_factory=list)
    units: list[list[_Call]] = field(default_factory=list)
    period: int = 1
    template: list[list[Step]] = field(default_factory=list)
    # Per template unit: the steps up to the refused call when that unit never completed
    # (its template is then only as seen), else None.
    partial: list[tuple[Step, ...] | None] = field(default_factory=list)


@dataclass
class _Group:
    """Workers with the same shape; `before`/`after`: steps added around template step
    (unit, position), the handshakes."""

    name: str
    kind: str
    workers: list[_Worker]
    template: list[list[Step]]
    connection: str
    blocking: bool
    timeout_ms: int | None
    transaction_mode: str | None
    before: dict[tuple[int, int], list[Step]] = field(default_factory=lambda: defaultdict(list))
    after: dict[tuple[int, int], list[Step]] = field(default_factory=lambda: defaultdict(list))
    start_after: float = 0.0
    stagger: float = 0.0
    partial: list[tuple[Step, ...] | None] = field(default_factory=list)

    @property
    def first_t0(self) -> int:
        return min(w.calls[0].t0 for w in self.workers)


@dataclass
class _Settings:
    db: str | None = None
    journal_mode: str = "delete"
    synchronous: str | None = None
    wal_autocheckpoint: int | None = None
    busy_timeout_ms: int = 5000
    transaction_mode: str = "deferred"
    shared_cache: bool = False


@dataclass(frozen=True)
class ScenarioDraft:
    """The generated scenario's TOML text and what the conversion left out (also in its header)."""

    text: str
    notes: tuple[str, ...]


def scenario_from_events(
    events: Iterable[dict[str, Any]],
    patterns: Iterable[str] = (),
    name: str = "from-trace",
    schema_db: str | None = None,
    today: datetime.date | None = None,
) -> ScenarioDraft:
    """The scenario TOML reproducing `events`; `patterns` are the log's findings (its expect
    list); `schema_db` a database file to read the schema from instead of the log's own."""
    log = _Log(events)
    notes: list[str] = list(log.notes)
    settings = log.settings()
    workers = log.shaped_workers()
    if not workers:
        raise LockprobeError("no SQL calls were recorded to make a scenario of")
    groups = _merge(workers, settings, log.opens, log.conn_modes)
    _line_up(groups, settings, notes)
    _phases(groups)
    _start_times(groups)
    schema, setup, schema_note = schema_for(schema_db or settings.db, log.creates)
    if schema_note:
        notes.append(schema_note)
    text = _render(
        name,
        log.source,
        settings,
        groups,
        schema,
        setup,
        sorted(set(patterns)),
        log.span_s,
        notes,
        today or datetime.date.today(),
    )
    return ScenarioDraft(text, tuple(notes))


# ----------------------------------------------------------------------------- the log


class _Log:
    """The log's calls on its busiest database file, per worker, and the settings it shows."""

    def __init__(self, events: Iterable[dict[str, Any]]) -> None:
        self.notes: list[str] = []
        self.source = ""
        self.creates: list[str] = []
        self.meta_db: str | None = None
        self.meta_mode: str | None = None
        self.meta_checkpoint: int | None = None
        self.meta_synchronous: str | None = None
        self.conn_db: dict[str, str | None] = {}
        self.opens: dict[str, dict[str, Any]] = {}
        self.worker_events: dict[str, dict[str, Any]] = {}
        self.raw_calls: list[dict[str, Any]] = []
        skipped: Counter[str] = Counter()
        for event in events:
            kind = event.get("k")
            if kind == "meta" and not self.source:
                self.source = str(event.get("source") or "")
                self.meta_db = event.get("db")
                self.meta_mode = event.get("journal_mode")
                self.meta_checkpoint = event.get("wal_autocheckpoint")
                self.meta_synchronous = event.get("synchronous")
            elif kind == "open":
                self.conn_db[event["conn"]] = event.get("db", self.meta_db)
                self.opens[event["conn"]] = event
            elif kind == "worker":
                self.worker_events.setdefault(event["worker"], event)
            elif kind == "call":
                if event.get("op") in ("executescript",):
                    skipped["executescript"] += 1
                    continue
                self.raw_calls.append(event)
        if skipped:
            self.notes.append(f"{skipped['executescript']} executescript call(s) left out")
        self.db = self._busiest_db()
        self.calls = [c for c in self.raw_calls if self._db_of(c["conn"]) == self.db]
        self.conn_modes = self._transaction_modes()
        times = [c["t0"] for c in self.calls] + [c["t1"] for c in self.calls]
        self.span_s = (max(times) - min(times)) / 1e9 if times else 0.0

    def _db_of(self, conn: str) -> str | None:
        return self.conn_db.get(conn, self.meta_db)

    def _busiest_db(self) -> str | None:
        counts = Counter(self._db_of(c["conn"]) for c in self.raw_calls)
        if not counts:
            return self.meta_db
        db, _ = counts.most_common(1)[0]
        others = [str(d) for d in counts if d != db]
        if others:
            self.notes.append(
                f"calls on other database files left out: {', '.join(sorted(others))}"
            )
        return db

    def _transaction_modes(self) -> dict[str, str]:
        """Each connection's transaction mode: its isolation_level when opened, unless its
        calls show otherwise (an isolation_level set after connect, as SQLAlchemy's recipe
        does): a write made outside a transaction that left none open ran in autocommit."""
        modes = {c: _transaction_mode(e.get("isolation")) for c, e in self.opens.items()}
        in_txn: dict[str, bool] = {}
        for call in self.calls:
            conn = call["conn"]
            word = _FIRST_WORD.match(str(call.get("sql") or ""))
            dml = word is not None and word.group(1).upper() in _WRITE_WORDS
            if dml and call.get("err") is None and not in_txn.get(conn, False):
                if not call.get("in_txn"):
                    modes[conn] = "autocommit"
                elif modes.get(conn, "autocommit") == "autocommit":
                    modes[conn] = "deferred"
            in_txn[conn] = bool(call.get("in_txn"))
        return modes

    def settings(self) -> _Settings:
        s = _Settings(db=self.db, synchronous=self.meta_synchronous)
        mode = self.meta_mode if self.db == self.meta_db else None
        for conn, event in self.opens.items():
            if self._db_of(conn) == self.db and event.get("journal_mode"):
                mode = str(event["journal_mode"]).lower()
        timeouts: Counter[int] = Counter()
        modes: Counter[str] = Counter()
        for conn, event in self.opens.items():
            if self._db_of(conn) != self.db:
                continue
            if event.get("timeout_ms") is not None:
                timeouts[int(event["timeout_ms"])] += 1
            modes[self.conn_modes[conn]] += 1
        for call in self.calls:
            sql = call.get("sql") or ""
            if call.get("err") is not None:
                if call.get("ext") == SQLITE_LOCKED_SHAREDCACHE:
                    s.shared_cache = True
                continue
            mode = journal_mode_set_by(sql) or mode
            pragma = _PRAGMA_VALUE.match(sql)
            if pragma and pragma.group(1).lower() == "synchronous":
                s.synchronous = _synchronous(pragma.group(2))
            elif pragma and pragma.group(1).lower() == "wal_autocheckpoint":
                s.wal_autocheckpoint = _int_or_none(pragma.group(2))
        if mode in JOURNAL_MODES:
            s.journal_mode = str(mode)
        elif mode:
            self.notes.append(f"journal_mode {mode} is not one a scenario sets: delete used")
        if self.meta_checkpoint not in (None, 1000) and s.wal_autocheckpoint is None:
            s.wal_autocheckpoint = int(self.meta_checkpoint)
        if timeouts:
            s.busy_timeout_ms = min(timeouts.most_common(1)[0][0], 3_600_000)
        if modes:
            s.transaction_mode = modes.most_common(1)[0][0]
        return s

    def shaped_workers(self) -> list[_Worker]:
        """Each worker's calls as steps, split into transactions and folded into a pass."""
        workers: dict[str, _Worker] = {}
        in_txn: dict[str, bool] = {}
        for event in self.calls:
            step = self._step(event)
            was_in_txn = in_txn.get(event["conn"], False)
            in_txn[event["conn"]] = bool(event.get("in_txn"))
            if step is None or (step[0] in ("commit", "rollback") and not was_in_txn):
                continue  # not SQL a scenario runs, or a commit with nothing to commit
            name = str(event.get("worker") or event["conn"])
            worker = workers.get(name)
            if worker is None:
                announced = self.worker_events.get(name, {})
                worker = workers[name] = _Worker(
                    name,
                    str(announced.get("group") or name),
                    str(announced.get("kind") or "thread"),
                    announced.get("thread"),
                )
            err = event.get("err")
            worker.calls.append(
                _Call(
                    int(event["t0"]),
                    int(event["t1"]),
                    name,
                    event["conn"],
                    step,
                    bool(event.get("in_txn")),
                    err,
                    bool(event.get("busy")),
                    event.get("thread"),
                )
            )
        shaped = []
        for worker in workers.values():
            if not any(c.step[0] in _SQL_STEPS or c.err is not None for c in worker.calls):
                continue  # a connection's set-up (the schema, settings) and nothing else
            # A transaction with no SQL a scenario runs (CREATE, PRAGMA) is the program's set-up.
            worker.units = [
                u
                for u in _units(worker.calls)
                if any(c.step[0] in _SQL_STEPS or c.err is not None for c in u)
            ]
            worker.calls = [c for u in worker.units for c in u]
            worker.period, worker.template, worker.partial = _fold(worker.units)
            shaped.append(worker)
        return shaped

    def _step(self, event: dict[str, Any]) -> Step | None:
        op, sql = event.get("op"), str(event.get("sql") or "")
        if op in ("commit", "rollback"):
            return (op, None)
        if op == "close_read":
            return ("close_reads", True)
        begin = _BEGIN.match(sql)
        if begin:
            return ("begin", (begin.group(1) or "").lower())
        word_match = _FIRST_WORD.match(sql)
        word = word_match.group(1).upper() if word_match else ""
        if word in ("COMMIT", "END"):
            return ("commit", None)
        if word == "ROLLBACK" and not re.match(r"\s*ROLLBACK\s+(TRANSACTION\s+)?TO\b", sql, re.I):
            return ("rollback", None)
        if word in _SCHEMA_WORDS:
            if word == "CREATE" and event.get("err") is None:
                self.creates.append(sql.strip())
            return None
        if word in _SETTING_WORDS or not word:
            return None
        if op == "open_read":
            return ("open_read", generalise_sql(sql))
        if word in _READ_WORDS or (word == "WITH" and not _writes(sql)):
            return ("read", generalise_sql(sql))
        return ("write", generalise_sql(sql))


def _writes(sql: str) -> bool:
    upper = sql.upper()
    return any(re.search(rf"\b{w}\b", upper) for w in _WRITE_WORDS)


def _transaction_mode(isolation: Any) -> str:
    """Python's isolation_level as a scenario's transaction_mode (None: autocommit)."""
    if isolation is None:
        return "autocommit"
    text = str(isolation).strip().lower()
    return text if text in ("immediate", "exclusive") else "deferred"


def _synchronous(value: str) -> str | None:
    names = {"0": "off", "1": "normal", "2": "full", "3": "extra"}
    value = names.get(value, value.lower())
    return value if value in ("off", "normal", "full", "extra") else None


def _int_or_none(value: str) -> int | None:
    return int(value) if value.isdigit() else None


# ---------------------------------------------------------------------- passes and groups


def _units(calls: list[_Call]) -> list[list[_Call]]:
    """Calls cut into transactions: a unit ends where the connection is out of a transaction
    again (a commit, a rollback, an autocommit statement, a refused BEGIN)."""
    units: list[list[_Call]] = []
    current: list[_Call] = []
    for call in calls:
        current.append(call)
        if not call.in_txn and call.step[0] != "open_read":
            units.append(current)
            current = []
    if current:
        units.append(current)
    return units


def _shape(unit: list[_Call]) -> tuple[tuple[Step, ...], bool]:
    """A unit's steps and whether it failed: a failed one is its steps up to the failed call
    (what came after, a rollback, is the program's reaction, which on_error repeats)."""
    for i, call in enumerate(unit):
        if call.err is not None:
            return tuple(c.step for c in unit[: i + 1]), True
    return tuple(c.step for c in unit), False


def _fold(
    units: list[list[_Call]],
) -> tuple[int, list[list[Step]], list[tuple[Step, ...] | None]]:
    """The shortest pass of units that the worker repeated (a failed unit matches the pass's
    unit it is the start of), its steps, and per unit the steps up to the refused call when it
    never completed; else the whole sequence once."""
    shapes = [_shape(u) for u in units]
    for period in range(1, len(shapes) + 1):
        template: list[list[Step]] = []
        partial: list[tuple[Step, ...] | None] = []
        for j in range(period):
            at = shapes[j::period]
            whole = {s for s, failed in at if not failed}
            if len(whole) > 1:
                break
            # Never completed: as seen, with the program's reaction.
            steps = next(iter(whole)) if whole else tuple(c.step for c in units[j])
            if any(failed and steps[: len(s)] != s for s, failed in at):
                break
            template.append(list(steps))
            partial.append(None if whole else at[0][0])
        else:
            return period, template, partial
    # pragma: no cover - the whole sequence (period n) always fits
    return len(units), [[c.step for c in u] for u in units], [None] * len(units)


def _same_pass(a: _Group | _Worker, b: _Worker) -> bool:
    """Whether two passes are one, but for units one of them never completed and that are the
    start of the other's (a worker whose every pass was refused, beside one of the same group
    whose passes went through)."""
    if len(a.template) != len(b.template):
        return False
    for j in range(len(a.template)):
        sa, sb = a.partial[j], b.partial[j]
        if sa is None and sb is None and a.template[j] != b.template[j]:
            return False
        if sa is None and sb is not None and tuple(a.template[j][: len(sb)]) != sb:
            return False
        if sb is None and sa is not None and tuple(b.template[j][: len(sa)]) != sa:
            return False
        if sa is not None and sb is not None and not (sa[: len(sb)] == sb or sb[: len(sa)] == sa):
            return False
    return True


def _joins(group: _Group, worker: _Worker) -> bool:
    """Whether the worker is one more of the group: the same pass; where either never
    completed a unit, only within one group of the log (a refused BEGIN IMMEDIATE is the
    start of every transaction that begins so)."""
    if not _same_pass(group, worker):
        return False
    exact = all(p is None for p in group.partial) and all(p is None for p in worker.partial)
    return exact or group.workers[0].group == worker.group


def _join(group: _Group, worker: _Worker) -> None:
    """The group's pass, each unit as the one that went through (else the longer start)."""
    for j in range(len(group.template)):
        mine, theirs = group.partial[j], worker.partial[j]
        if mine is None:
            continue
        if theirs is None or len(theirs) > len(mine):
            group.template[j] = list(worker.template[j])
            group.partial[j] = theirs


def _merge(
    workers: list[_Worker],
    settings: _Settings,
    opens: dict[str, dict[str, Any]],
    conn_modes: dict[str, str],
) -> list[_Group]:
    """Workers of one kind with the same pass, connection use and settings, as one group."""
    groups: dict[Any, list[_Group]] = defaultdict(list)
    names: set[str] = set()
    for worker in workers:
        conns = {c.conn for c in worker.calls}
        connection = "per-iteration" if len(conns) > 1 and len(worker.units) > 1 else "per-worker"
        blocking = worker.kind != "coroutine" or all(
            c.thread == worker.thread for c in worker.calls
        )
        first = worker.calls[0].conn
        opened = opens.get(first, {})
        timeout = opened.get("timeout_ms")
        mode = conn_modes.get(first)
        key = (worker.kind, connection, blocking, timeout, mode)
        group = next((g for g in groups[key] if _joins(g, worker)), None)
        if group is None:
            name = _group_name(worker.group, names)
            names.add(name)
            group = _Group(
                name,
                worker.kind,
                [],
                [list(unit) for unit in worker.template],
                connection,
                blocking,
                None if timeout in (None, settings.busy_timeout_ms) else int(timeout),
                mode if mode != settings.transaction_mode else None,
                partial=list(worker.partial),
            )
            groups[key].append(group)
        else:
            _join(group, worker)
        group.workers.append(worker)
    ordered = sorted((g for gs in groups.values() for g in gs), key=lambda g: g.first_t0)
    processes = sum(len(g.workers) for g in ordered if g.kind == "process")
    if processes > MAX_PROCESSES:
        raise _too_many(processes)
    return ordered


def _too_many(processes: int) -> Exception:
    return LockprobeError(
        f"the log has {processes} worker processes; a scenario runs at most {MAX_PROCESSES}"
    )


def _group_name(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^\w.-]+", "_", label.replace(":", "_")).strip("_") or "workers"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


# ------------------------------------------------------------------------- handshakes


@dataclass(frozen=True)
class _Place:
    """Where a call of the log sits: its worker's group, its template (unit, position)."""

    group: _Group
    unit: list[_Call]
    index: int  # the call's index in `unit`
    template_unit: int


def _line_up(groups: list[_Group], settings: _Settings, notes: list[str]) -> None:
    """signal/wait steps that put the first refused call (else the first that waited) where
    the log had it: after the holder took its lock, and, when the waiter's transaction read
    first, after that read; the holder releases after the waiter's group ended when it did so
    in the log; groups that started after that moment wait for it."""
    places: dict[int, _Place] = {}
    for group in groups:
        for worker in group.workers:
            for u, unit in enumerate(worker.units):
                for i, call in enumerate(unit):
                    places[id(call)] = _Place(group, unit, i, u % worker.period)
    calls = sorted((c for g in groups for w in g.workers for c in w.calls), key=lambda c: c.t0)
    refused = [c for c in calls if c.err in LOCK_ERRORS]
    for waiter in refused or [c for c in calls if c.waited]:
        if _handshake(waiter, places, groups, settings):
            return
    if refused:
        notes.append(
            "no refused call had a holder in another group: the contention is left to the "
            "measured start times and think times"
        )


def _handshake(
    call: _Call, places: dict[int, _Place], groups: list[_Group], settings: _Settings
) -> bool:
    w = places[id(call)]
    holder = _holding_unit(call, w.group, places, groups)
    if holder is None:
        return False
    h, s_index = holder
    took = h.unit[s_index]
    # The waiter waits before its first call of the transaction that began after the holder
    # took its lock.
    k = next(i for i in range(w.index + 1) if w.unit[i].t0 >= took.t1 or i == w.index)
    if not _in_template(w, k) or not _in_template(h, s_index):
        return False
    h.group.after[(h.template_unit, s_index)].append(("signal", "held"))
    w.group.before[(w.template_unit, k)].append(("wait", "held"))
    first_reads = w.unit[:k]
    holder_so_far = h.unit[: s_index + 1]
    if (
        first_reads
        and all(_reads_only(c.step) for c in first_reads)
        and (settings.journal_mode == "wal" or all(c.in_txn for c in holder_so_far))
    ):
        m = next((i for i, c in enumerate(holder_so_far) if c.t0 >= first_reads[-1].t1), None)
        if m is not None:
            w.group.after[(w.template_unit, k - 1)].append(("signal", "ready"))
            h.group.before[(h.template_unit, m)].append(("wait", "ready"))
    last = h.unit[-1]
    waiter_end = max(wk.calls[-1].t1 for wk in w.group.workers)
    if (
        last.step[0] in ("commit", "rollback", "close_reads")
        and len(h.unit) - 1 > s_index
        and last.t0 >= waiter_end
        and _in_template(h, len(h.unit) - 1)
    ):
        h.group.before[(h.template_unit, len(h.unit) - 1)].append(("wait", f"done:{w.group.name}"))
    for group in groups:
        if group in (h.group, w.group) or group.before.get((0, 0)):
            continue
        if group.first_t0 >= took.t1:
            group.before[(0, 0)].append(("wait", "held"))
    return True


def _phases(groups: list[_Group]) -> None:
    """A group that began after another had ended (a program's set-up, then its workers)
    waits for `done:` that group, so the phases do not overlap as the log shows they did not.
    Only for a group that waits for nothing itself: its end never depends on another."""
    for earlier in groups:
        waits = any(
            step[0] == "wait"
            for steps in (*earlier.before.values(), *earlier.after.values())
            for step in steps
        )
        if waits:
            continue
        ended = max(w.calls[-1].t1 for w in earlier.workers)
        for later in groups:
            if later is not earlier and later.first_t0 > ended:
                later.before[(0, 0)].insert(0, ("wait", f"done:{earlier.name}"))


def _holding_unit(
    call: _Call, waiter_group: _Group, places: dict[int, _Place], groups: list[_Group]
) -> tuple[_Place, int] | None:
    """The transaction of another group open when `call` began (one that wrote first), and the
    index of its last call that had ended by then."""
    candidates = []
    for group in groups:
        if group is waiter_group:
            continue
        for worker in group.workers:
            for unit in worker.units:
                if unit[0].t0 > call.t0 or unit[-1].t1 < call.t0:
                    continue
                done = [i for i, c in enumerate(unit) if c.t1 <= call.t0]
                if not done:
                    continue
                wrote = any(not _reads_only(unit[i].step) for i in done)
                candidates.append((not wrote, unit[0].t0, unit, done[-1]))
    if not candidates:
        return None
    _, _, unit, index = min(candidates, key=lambda c: (c[0], c[1]))
    return places[id(unit[index])], index


def _reads_only(step: Step) -> bool:
    return step[0] in ("read", "open_read") or (step[0] == "begin" and step[1] in ("", "deferred"))


def _in_template(place: _Place, index: int) -> bool:
    """Whether the unit's call at `index` is the template's step there (a failed unit's tail
    is not)."""
    steps = place.group.template[place.template_unit]
    return index < len(steps) and place.unit[index].step == steps[index]


# ---------------------------------------------------------------------- time


def _start_times(groups: list[_Group]) -> None:
    """start_after and stagger from when each worker made its first call, for the groups that
    do not wait for a handshake first."""
    start = min(g.first_t0 for g in groups)
    for group in groups:
        if group.before.get((0, 0)):
            continue
        offsets = sorted((w.calls[0].t0 - start) / 1e9 for w in group.workers)
        if offsets[0] >= START_OFFSET_MIN_S:
            group.start_after = round(offsets[0], 3)
        spread = offsets[-1] - offsets[0]
        if len(offsets) > 1 and spread >= START_OFFSET_MIN_S:
            group.stagger = round(spread / (len(offsets) - 1), 4)


def _think_times(group: _Group) -> tuple[dict[tuple[int, int], float], float]:
    """The median gap before each template step, and between passes, in seconds (gaps after a
    refused call are left out: the run engine starts the next pass at once)."""
    gaps: dict[tuple[int, int], list[float]] = defaultdict(list)
    between: list[float] = []
    for worker in group.workers:
        previous: _Call | None = None
        for u, unit in enumerate(worker.units):
            j = u % worker.period
            steps = group.template[j]
            for i, call in enumerate(unit):
                in_step = i < len(steps) and call.step == steps[i]
                if in_step and previous is not None and previous.err is None:
                    gap = (call.t0 - previous.t1) / 1e9
                    if i == 0 and j == 0:
                        between.append(gap)
                    else:
                        gaps[(j, i)].append(gap)
                previous = call
    medians = {place: statistics.median(g) for place, g in gaps.items()}
    return medians, statistics.median(between) if between else 0.0


def _steps(group: _Group) -> list[Step]:
    medians, between = _think_times(group)
    steps: list[Step] = []
    for j, unit in enumerate(group.template):
        for i, step in enumerate(unit):
            waits = group.before.get((j, i), [])
            gap = medians.get((j, i), 0.0)
            if gap >= THINK_TIME_MIN_S and not waits:
                steps.append(("sleep", round(gap, 3)))
            steps.extend(waits)
            steps.append(step)
            steps.extend(group.after.get((j, i), []))
    if between >= THINK_TIME_MIN_S:
        steps.append(("sleep", round(between, 3)))
    return steps


def _repeat(group: _Group) -> int:
    return max(-(-len(w.units) // w.period) for w in group.workers)


# ----------------------------------------------------------------------------- TOML


_GENERALISED = """\
# What was generalised (docs/scenario-format.md, "From a trace"):
# - each worker's calls are its steps, folded into the shortest repeating pass (repeat);
#   workers with the same pass and settings are one group (count); a refused call's pass
#   ends there, as the program's did (on_error = "rollback")
# - SQL keeps its shape only: string, blob and number literals, bound parameters and
#   comments are replaced by generated values; PRAGMA and CREATE calls became settings
#   and schema
# - think times (sleep) are the median measured gap before each step; start_after and
#   stagger are when the workers made their first call
# - signal/wait steps ("held", "ready", "done:GROUP") line up the first refused call the
#   way the log ordered it; everything else runs as freely as it did
# - rows are generated (as many as each table had, at most 1000): none is copied
"""


def _render(
    name: str,
    source: str,
    settings: _Settings,
    groups: list[_Group],
    schema: list[str],
    setup: list[str],
    patterns: list[str],
    span_s: float,
    notes: list[str],
    today: datetime.date,
) -> str:
    from sqlite_lockprobe import __version__

    words = source.split()
    command = " ".join(words[:3]) + (" …" if len(words) > 3 else "")
    lines = [
        f"# Made by lockprobe {__version__} on {today.isoformat()} from the event log of: "
        f"{command or 'an unnamed recording'}",
        _GENERALISED.rstrip("\n"),
    ]
    lines += [f"# Note: {n}" for n in notes]
    lines += [
        "# Run it: lockprobe run THIS.toml (--compare-fix: what BEGIN IMMEDIATE, WAL or a",
        "# timeout would change); in CI: lockprobe check THIS.toml. expect lists the findings",
        "# of the log: once your fix is in, set expect = [] (or [check] forbid).",
        "",
        f"name = {_toml(name)}",
        f"description = {_toml('Reproduces the transactions of ' + (command or 'a recording'))}",
        f"expect = {_toml(patterns)}",
        f"max_seconds = {min(MAX_SECONDS, round(max(10.0, 3 * span_s + 5), 1))}",
        "",
        "[database]",
        f"journal_mode = {_toml(settings.journal_mode)}",
    ]
    if settings.synchronous:
        lines.append(f"synchronous = {_toml(settings.synchronous)}")
    lines.append(f"busy_timeout_ms = {settings.busy_timeout_ms}")
    lines.append(f"transaction_mode = {_toml(settings.transaction_mode)}")
    if settings.wal_autocheckpoint is not None:
        lines.append(f"wal_autocheckpoint = {settings.wal_autocheckpoint}")
    if settings.shared_cache:
        lines.append("shared_cache = true")
    lines.append("schema = " + _toml_list(schema))
    if setup:
        lines.append("setup = " + _toml_list(setup))
    for group in groups:
        lines += ["", "[[group]]", f"name = {_toml(group.name)}", f"kind = {_toml(group.kind)}"]
        if len(group.workers) > 1:
            lines.append(f"count = {len(group.workers)}")
        if _repeat(group) > 1:
            lines.append(f"repeat = {_repeat(group)}")
        if group.connection != "per-worker":
            lines.append(f"connection = {_toml(group.connection)}")
        if group.kind == "coroutine" and not group.blocking:
            lines.append("blocking = false")
        if group.start_after:
            lines.append(f"start_after = {group.start_after}")
        if group.stagger:
            lines.append(f"stagger = {group.stagger}")
        if group.timeout_ms is not None:
            lines.append(f"busy_timeout_ms = {group.timeout_ms}")
        if group.transaction_mode is not None:
            lines.append(f"transaction_mode = {_toml(group.transaction_mode)}")
        lines.append("steps = [")
        lines += [f"  {_toml_step(step)}," for step in _steps(group)]
        lines.append("]")
    return "\n".join(lines) + "\n"


def _toml_list(items: list[str]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"  {_toml(i)},\n" for i in items) + "]"


def _toml_step(step: Step) -> str:
    action, value = step
    if action in ("commit", "rollback"):
        return _toml(action)
    if action == "begin" and not value:
        return '"begin"'
    return "{ " + f"{action} = {_toml(value)}" + " }"
