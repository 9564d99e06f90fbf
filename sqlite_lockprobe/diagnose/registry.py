"""The one list of patterns a diagnosis can find, in precedence order.

Everything else that names pattern ids reads them from here: each detector module's `PATTERN`,
`detectors.DETECTORS`, the precedence of `causes.cause_of`, the ids a scenario, `check`, `run`,
`report` and `trace` accept. Adding a pattern is one module `diagnose/<id with _>.py` with a
`detect(timeline)` and one line below. This module imports no detector (a spawned worker
process validates a scenario's ids without loading them); `detectors.py` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlite_lockprobe.errors import LockprobeError


class Pattern(NamedTuple):
    """One pattern: its id (the JSON contract's `pattern`) and a one-line title."""

    id: str
    title: str

    @property
    def module(self) -> str:
        """The detector module, named after the id: `diagnose/write_convoy.py`."""
        return f"sqlite_lockprobe.diagnose.{self.id.replace('-', '_')}"


# Precedence order: a wait goes to the first pattern here that claims it (causes.cause_of).
# checkpoint-starvation, table-locked and network-filesystem claim no busy wait.
PATTERNS: tuple[Pattern, ...] = (
    Pattern("upgrade-deadlock", "a read transaction refused its upgrade to a write"),
    Pattern("self-deadlock", "the lock's holder runs on the waiter's own thread"),
    Pattern("external-holder", "a process outside the workload holds the lock"),
    Pattern("no-busy-timeout", "no busy_timeout: failed at the first contention"),
    Pattern("reader-blocks-writer", "a rollback-journal COMMIT waited for readers"),
    Pattern("long-write-transaction", "one transaction held the write lock too long"),
    Pattern("write-convoy", "waits behind a queue of short writers"),
    Pattern("checkpoint-starvation", "readers keep the WAL from being checkpointed"),
    Pattern("table-locked", "SQLITE_LOCKED: a table lock inside shared cache"),
    Pattern("network-filesystem", "the database is on a network filesystem"),
    Pattern("unexplained-busy", "a failed or long wait no pattern explains"),
)

PRECEDENCE: tuple[str, ...] = tuple(p.id for p in PATTERNS)
BY_ID: dict[str, Pattern] = {p.id: p for p in PATTERNS}
BY_MODULE: dict[str, Pattern] = {p.module: p for p in PATTERNS}

# Words that stand for "no finding" in an expect list; `any` stands for every pattern in
# trace's --fail-on.
HEALTHY_WORDS = ("healthy", "none")
ANY_WORD = "any"


def pattern_of(module_name: str) -> str:
    """The id registered for a detector module (its `__name__`): a detector's `PATTERN`."""
    try:
        return BY_MODULE[module_name].id
    except KeyError:
        raise LookupError(f"{module_name} is not registered in diagnose/registry.py") from None


def pattern_ids(
    values: Iterable[str], where: str, allow_healthy: bool = False, allow_any: bool = False
) -> tuple[str, ...]:
    """Validated, sorted, de-duplicated pattern ids; `healthy`/`none` dropped where allowed
    (so an expect list of just `healthy` is the empty set), `any` kept where allowed. An
    unknown id raises naming `where`, the id and every valid one."""
    extra = (HEALTHY_WORDS[:1] if allow_healthy else ()) + ((ANY_WORD,) if allow_any else ())
    found: set[str] = set()
    for value in values:
        if allow_healthy and value in HEALTHY_WORDS:
            continue
        if value in BY_ID or (allow_any and value == ANY_WORD):
            found.add(value)
            continue
        raise LockprobeError(
            f"{where}: unknown pattern id {value!r} (expected one of: "
            f"{', '.join([*sorted(BY_ID), *extra])})"
        )
    return tuple(sorted(found))
