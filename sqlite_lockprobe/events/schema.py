"""The event schema: each event kind's fields, in the order its recorded tuple carries them
after the kind, the types each field may hold and, for a field a record may leave out (older
logs, short records, one source's events), its default. Everything else follows from it:
`EVENT_FIELDS` and the dicts (records.py), the short call records' decoders (eventfile.py),
and the builders that producers of full events call (`call_event`).

Standard library only: the probe records with it inside users' interpreters. Recorded tuples
stay plain tuples (marshal writes nothing else); the builders are generated once, at import,
so a record built by keyword costs one call more than the tuple written by hand.
"""

from __future__ import annotations

import functools
import keyword
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple


class Items(NamedTuple):
    """A tuple or a list whose items are each of one of `types` (a call's statements)."""

    types: tuple[type, ...]


# The types a field may hold: a Python type, None, or Items (a tuple or list of them).
TypeSpec = type | Items | None


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Field(NamedTuple):
    """One field of an event: its name, what it may hold, and its default where a record may
    leave it out (REQUIRED: every record carries it)."""

    name: str
    types: tuple[TypeSpec, ...]
    default: Any = REQUIRED


INT: tuple[TypeSpec, ...] = (int,)
INT_OR_NONE: tuple[TypeSpec, ...] = (int, None)
STR: tuple[TypeSpec, ...] = (str,)
STR_OR_NONE: tuple[TypeSpec, ...] = (str, None)
BOOL: tuple[TypeSpec, ...] = (bool,)
STRINGS: tuple[TypeSpec, ...] = (Items((str,)),)
DICTS: tuple[TypeSpec, ...] = (Items((dict,)),)

KINDS: dict[str, tuple[Field, ...]] = {
    # The run or traced program: what was run, against which database.
    "meta": (
        Field("t", INT),
        Field("pid", INT),
        Field("source", STR),
        Field("db", STR_OR_NONE),
        Field("journal_mode", STR_OR_NONE),
        Field("page_size", INT_OR_NONE),
        Field("wal_autocheckpoint", INT_OR_NONE),
        Field("python", STR),
        Field("sqlite", STR_OR_NONE),
        Field("platform", STR),
        # trace only: which wrappers recorded the calls, "compiled" or "python" (traced.py).
        Field("probe_path", STR_OR_NONE, None),
        # run only: the scenario's synchronous setting (None: SQLite's default), which no
        # call shows (`lockprobe scenario` keeps it).
        Field("synchronous", STR_OR_NONE, None),
    ),
    # The filesystem the database lives on (network_reason set: NFS, SMB, 9p, remote FUSE...).
    "filesystem": (
        Field("t", INT),
        Field("db", STR),
        Field("type", STR_OR_NONE),
        Field("mount_point", STR_OR_NONE),
        Field("source", STR_OR_NONE),
        Field("network_reason", STR_OR_NONE),
    ),
    # A worker (thread, process or asyncio task) started; identity of who does the calls.
    "worker": (
        Field("t", INT),
        Field("worker", STR),
        Field("group", STR),
        Field("kind", STR),
        Field("pid", INT),
        Field("thread", INT_OR_NONE),
        Field("task", STR_OR_NONE),
    ),
    # A connection was opened and (maybe) instrumented; `db` is the database file's real path
    # (trace only; None for in-memory and temporary databases).
    "open": (
        Field("t", INT),
        Field("conn", STR),
        Field("worker", STR),
        Field("group", STR),
        Field("pid", INT),
        Field("timeout_ms", INT),
        Field("isolation", STR_OR_NONE),
        Field("journal_mode", STR_OR_NONE),
        Field("instrumented", BOOL),
        Field("reduced_reason", STR_OR_NONE),
        Field("db", STR_OR_NONE, None),
    ),
    "close": (Field("t", INT), Field("conn", STR)),
    # One application call into sqlite3 (execute, commit, rollback), with the statements
    # SQLite ran for it, busy-handler calls during it, and its error codes if it failed.
    "call": (
        Field("t0", INT),
        Field("t1", INT),
        Field("conn", STR),
        Field("worker", STR),
        Field("thread", INT_OR_NONE),
        Field("task", STR_OR_NONE),
        Field("op", STR),
        Field("sql", STR),
        Field("stmts", STRINGS),
        # None: the connection was not probed (no busy handler of ours to count).
        Field("busy", INT_OR_NONE, 0),
        Field("err", INT_OR_NONE, None),
        Field("ext", INT_OR_NONE, None),
        Field("msg", STR_OR_NONE, None),
        Field("in_txn", BOOL),
        # The line that began the call's transaction (trace and record() only).
        Field("site", STR_OR_NONE, None),
        # Statements the call ran beyond the probe's budget, counted but not kept in stmts
        # (tracer.StatementBudget; absent or 0: every statement is in stmts).
        Field("folded", INT, 0),
    ),
    # A statement of conn left unfinished outside a transaction (a cursor not exhausted), seen
    # while another connection of the same process waited: it keeps conn's read lock. site:
    # where conn's thread was at that moment (trace only).
    "unfinished": (
        Field("t", INT),
        Field("conn", STR),
        Field("sql", STR),
        Field("site", STR_OR_NONE, None),
    ),
    # One busy-handler invocation: retry number n, then a sleep of delay_ms (0 = gave up).
    "busy": (Field("t", INT), Field("conn", STR), Field("n", INT), Field("delay_ms", INT)),
    # The OS lock table of database file `db` while conn waited (or right after it failed with
    # SQLITE_BUSY): every process's SQLite locks on the file and its -shm, as dicts {pid, file,
    # lock, kind} (plus name, cmdline, uid on each other process's first lock); source
    # "/proc/locks", "F_GETLK" or "unavailable" (note says why).
    "holders": (
        Field("t", INT),
        Field("conn", STR),
        Field("db", STR_OR_NONE),
        Field("source", STR),
        Field("locks", DICTS),
        Field("note", STR_OR_NONE),
    ),
    # A reading of the -wal file (bytes) and of the -shm header (frames) during the run, of
    # database `db` (real path under trace; absent from logs before it was added). Under
    # trace every process samples the databases it has open: samples of one file from
    # several processes are readings of the same file.
    "wal": (
        Field("t", INT),
        Field("bytes", INT_OR_NONE),
        Field("mx_frame", INT_OR_NONE),
        Field("backfilled", INT_OR_NONE),
        Field("db", STR_OR_NONE, None),
    ),
    # The application's own time between calls (sleep / await steps), for the timeline.
    "idle": (
        Field("t0", INT),
        Field("t1", INT),
        Field("worker", STR),
        Field("conn", STR_OR_NONE),
        Field("what", STR),
    ),
    # A worker ended; `error` names an unexpected failure (a crash, not a SQLite error).
    "worker_end": (
        Field("t", INT),
        Field("worker", STR),
        Field("ops", INT),
        Field("error", STR_OR_NONE),
    ),
}


class ShortCall(NamedTuple):
    """A short record of a call that went through (eventfile.py writes and reads it), read
    back as a full `call` event: `record` names its fields by position, `key` what its key
    record names (given once per key), `fills` the `call` fields its decoder gives, in that
    order (every other field takes its default), `absent` the `call` fields its events leave
    out (cut from the tuple's end while they are last; a field added after them gives them
    their default)."""

    record: tuple[str, ...]
    key: tuple[str, ...]
    fills: tuple[str, ...]
    absent: tuple[str, ...] = ()


# The run engine's: (t0, t1 - t0, key, in_txn), or with (busy, stmts) after them; the engine
# keeps no statement budget, and its events have no `folded`.
RUN_CALL = ShortCall(
    record=("t0", "duration", "key", "in_txn", "busy", "stmts"),
    key=("conn", "worker", "thread", "task", "op", "sql", "probed"),
    fills=("t0", "t1", "conn", "worker", "thread", "task", "op", "sql", "stmts", "busy", "in_txn"),
    absent=("folded",),
)
# A traced program's (tracer.py and its compiled twin _speedups.c): the op in the key's low
# bits; a call recorded short never waited (busy 0).
TRACE_CALL = ShortCall(
    record=("t0", "t1", "key_op", "sql", "stmts", "in_txn", "site"),
    key=("conn", "worker", "thread", "task"),
    fills=("t0", "t1", "conn", "worker", "thread", "task", "op", "sql", "stmts", "in_txn", "site"),
)


class Schema:
    """What follows from a declaration of kinds (`KINDS`, or a variant a test builds): field
    names, dict keys, the short calls' assemblers and the full events' builders."""

    def __init__(self, kinds: Mapping[str, tuple[Field, ...]]) -> None:
        self.kinds = dict(kinds)
        self.fields = {kind: tuple(f.name for f in fields) for kind, fields in kinds.items()}
        # ("k", field, ...) per kind: a recorded tuple starts with its kind, so one zip
        # builds the whole dict.
        self.keys = keys = {kind: ("k", *names) for kind, names in self.fields.items()}

        def to_dict(record: tuple[Any, ...]) -> dict[str, Any]:
            """A recorded tuple as a JSON-ready dict: {"k": kind, field: value, ...}."""
            return dict(zip(keys[record[0]], record, strict=False))

        self.to_dict = to_dict

    # The full `call` record of a short one, from the values of its `fills` (in that order):
    # as a tuple, and as the dict the tuple becomes (built at once: decoding costs no more
    # than when these were written by hand). Each made on first use: compiling one costs
    # about 0.5 ms, and the traced program, where the probe is imported, uses one builder.
    @functools.cached_property
    def run_call(self) -> Callable[..., tuple[Any, ...]]:
        return self.assembler("call", RUN_CALL.fills, RUN_CALL.absent)

    @functools.cached_property
    def trace_call(self) -> Callable[..., tuple[Any, ...]]:
        return self.assembler("call", TRACE_CALL.fills, TRACE_CALL.absent)

    @functools.cached_property
    def run_call_dict(self) -> Callable[..., dict[str, Any]]:
        return self.assembler("call", RUN_CALL.fills, RUN_CALL.absent, True)

    @functools.cached_property
    def trace_call_dict(self) -> Callable[..., dict[str, Any]]:
        return self.assembler("call", TRACE_CALL.fills, TRACE_CALL.absent, True)

    # Full `call` records by keyword: the tracer's and record()'s, the run engine's.
    @functools.cached_property
    def call_event(self) -> Callable[..., tuple[Any, ...]]:
        return self.builder("call")

    @functools.cached_property
    def run_call_event(self) -> Callable[..., tuple[Any, ...]]:
        return self.builder("call", RUN_CALL.absent)

    def assembler(
        self, kind: str, fills: Iterable[str], absent: Iterable[str] = (), as_dict: bool = False
    ) -> Callable[..., Any]:
        """A function from the values of `fills` (positional, in that order) to the full
        record of `kind` (or its dict), the other fields at their defaults."""
        return self._record_function(kind, tuple(fills), set(absent), False, as_dict)

    def builder(self, kind: str, absent: Iterable[str] = ()) -> Callable[..., tuple[Any, ...]]:
        """A function from keyword arguments to the full record of `kind`: every field
        without a default must be given; the fields in `absent` cannot be."""
        return self._record_function(kind, (), set(absent), True, False)

    def _record_function(
        self, kind: str, fills: tuple[str, ...], absent: set[str], by_keyword: bool, as_dict: bool
    ) -> Callable[..., Any]:
        fields = self.kinds[kind]
        names = [f.name for f in fields]
        for name in (*fills, *absent):
            if name not in names:
                raise ValueError(f"{kind} has no field {name!r}")
        end = len(fields)
        while end and names[end - 1] in absent and names[end - 1] not in fills:
            end -= 1
        constants: dict[str, Any] = {}
        params: list[str] = []
        values: list[str] = []
        for field in fields[:end]:
            if not field.name.isidentifier() or keyword.iskeyword(field.name):
                raise ValueError(f"{kind}: {field.name!r} cannot be a parameter")
            given = field.name in fills or by_keyword
            if not given and field.default is REQUIRED:
                raise ValueError(f"{kind}: {field.name} has no default and is not given")
            if field.default is not REQUIRED:
                constants[f"_{field.name}"] = field.default
            if by_keyword:
                default = "" if field.default is REQUIRED else f"=_{field.name}"
                params.append(f"{field.name}{default}")
            values.append(field.name if given else f"_{field.name}")
        if not by_keyword:
            params = list(fills)
        signature = ("*, " if by_keyword and params else "") + ", ".join(params)
        if as_dict:
            items = [f"{name!r}: {value}" for name, value in zip(names, values, strict=False)]
            built = "{" + ", ".join([f"'k': {kind!r}", *items]) + "}"
        else:
            built = f"({kind!r}, {', '.join(values)},)"
        source = f"def {kind}({signature}):\n    return {built}\n"
        exec(source, constants)  # noqa: S102 - generated from the declaration above
        function: Callable[..., Any] = constants[kind]
        function.__qualname__ = f"{kind}_event"
        return function

    def problems(self, record: tuple[Any, ...]) -> list[str]:
        """What is wrong with a recorded full tuple: an unknown kind, too few or too many
        fields (a record may stop before its trailing fields with defaults), a value of a
        type its field does not allow. Empty: it follows the schema."""
        kind = record[0] if record else None
        fields = self.kinds.get(kind) if isinstance(kind, str) else None
        if fields is None:
            return [f"unknown kind {kind!r}"]
        required = max((i + 1 for i, f in enumerate(fields) if f.default is REQUIRED), default=0)
        carried = len(record) - 1
        if not required <= carried <= len(fields):
            return [f"{kind}: {carried} fields, expected {required} to {len(fields)}"]
        return [
            f"{kind}.{field.name}: {value!r} is not {_describe(field.types)}"
            for field, value in zip(fields, record[1:], strict=False)
            if not _allowed(value, field.types)
        ]


def _allowed(value: Any, types: tuple[TypeSpec, ...]) -> bool:
    for spec in types:
        if spec is None:
            if value is None:
                return True
        elif isinstance(spec, Items):
            if type(value) in (tuple, list) and all(type(i) in spec.types for i in value):
                return True
        elif type(value) is spec:  # exact: a bool is no int here
            return True
    return False


def _describe(types: tuple[TypeSpec, ...]) -> str:
    def one(spec: TypeSpec) -> str:
        if spec is None:
            return "None"
        if isinstance(spec, Items):
            return f"tuple/list of {' or '.join(t.__name__ for t in spec.types)}"
        return spec.__name__

    return " or ".join(one(spec) for spec in types)


SCHEMA = Schema(KINDS)
EVENT_FIELDS = SCHEMA.fields


def call_event(**fields: Any) -> tuple[Any, ...]:
    """A full `call` record by keyword (the tracer's and record()'s)."""
    return SCHEMA.call_event(**fields)


def run_call_event(**fields: Any) -> tuple[Any, ...]:
    """A full `call` record by keyword, without the fields the run engine's calls leave out."""
    return SCHEMA.run_call_event(**fields)
