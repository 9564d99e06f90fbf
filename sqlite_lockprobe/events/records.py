"""The event model: flat tuples recorded cheaply while the workload runs (eventfile.py writes
them, one file per process), turned into dicts, merged by monotonic time, and saved and read
back as JSON lines (the `--events` log).

Standard library only: the `trace` probe records with it inside users' interpreters.
`time.monotonic_ns()` is system-wide on Linux, so events from several processes merge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlite_lockprobe.events.schema import SCHEMA

EVENT_FORMAT = 1

# Field names of each event kind, in tuple order after the kind itself (schema.py declares
# them, with their types and defaults).
EVENT_FIELDS = SCHEMA.fields


def event_time(event: dict[str, Any]) -> int:
    """The time an event is ordered by: its start."""
    t = event.get("t0", event.get("t"))
    return int(t) if t is not None else 0


# A recorded tuple as a JSON-ready dict: {"k": kind, field: value, ...}.
to_dict = SCHEMA.to_dict


class SkippedLines:
    """The lines of a log that were not events, counted as it is read (`report` says so).
    `torn`: a last line cut before its line end, as a process killed mid-write leaves it;
    `not_json`: lines that are not one JSON value; `not_events`: JSON, but not an event of a
    known kind. Blank lines carry nothing and are not counted."""

    __slots__ = ("torn", "not_json", "not_events")

    def __init__(self) -> None:
        self.torn = 0
        self.not_json = 0
        self.not_events = 0

    @property
    def total(self) -> int:
        return self.torn + self.not_json + self.not_events

    def count(self, line: str, value: Any) -> None:
        """`line` (complete, decoded as `value`) was not an event."""
        if value is _UNDECODABLE:
            if line.strip():
                self.not_json += 1
        else:
            self.not_events += 1

    def to_json(self) -> dict[str, int]:
        return {"torn": self.torn, "not_json": self.not_json, "not_events": self.not_events}


def read_events(
    path: str | os.PathLike[str], skipped: SkippedLines | None = None
) -> Iterator[dict[str, Any]]:
    """Events from one JSONL file. A torn last line (a process killed mid-write) is skipped,
    and so is any line that is not one JSON object of a known kind; `skipped` counts them."""
    with open(path, encoding="utf-8") as src:
        yield from _fastest_decoder()(src, skipped)


def _fastest_decoder() -> Callable[[Iterable[str], SkippedLines | None], Iterator[dict[str, Any]]]:
    """orjson where installed (lockprobe's own install has it). Imported here, not when this
    module loads: the probe in a traced program imports this module and must import nothing
    the program did not."""
    try:
        import orjson  # noqa: F401
    except ImportError:  # pragma: no cover - a copy of lockprobe without its dependencies
        return events_with_json
    return events_with_orjson


def events_with_json(
    lines: Iterable[str], skipped: SkippedLines | None = None
) -> Iterator[dict[str, Any]]:
    """The events among lines, decoded by the standard library alone."""
    for line in lines:
        # The C scanner behind json.loads, called directly: json.loads costs as much
        # again per line, seconds on a log of millions of events. A line it reads up to
        # its "\n" is done; any other is read again the careful way.
        try:
            event, end = _scan_once(line, 0)
        except (StopIteration, json.JSONDecodeError):
            event, end = _UNDECODABLE, 0
        if line[end:] != "\n":
            if not line.endswith("\n"):
                _torn(line, skipped)
                break
            event = _decode_line(line)
        if isinstance(event, dict) and event.get("k") in EVENT_FIELDS:
            yield event
        elif skipped is not None:
            skipped.count(line, event)


def events_with_orjson(
    lines: Iterable[str], skipped: SkippedLines | None = None
) -> Iterator[dict[str, Any]]:
    """The same events, decoded by orjson (twice as fast as the standard library's scanner).
    orjson is stricter (no NaN, no lone surrogates): a line it refuses is read again by the
    standard library, so the same lines are events. (An integer past 64 bits comes back as a
    float; lockprobe writes none: times are monotonic nanoseconds.)"""
    from orjson import loads

    for line in lines:
        if not line.endswith("\n"):
            _torn(line, skipped)
            break
        try:
            event = loads(line)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            event = _decode_line(line)
        if isinstance(event, dict) and event.get("k") in EVENT_FIELDS:
            yield event
        elif skipped is not None:
            skipped.count(line, event)


def _torn(line: str, skipped: SkippedLines | None) -> None:
    """The last line has no line end: its writer stopped mid-line, and it is dropped."""
    if skipped is not None and line.strip():
        skipped.torn += 1


# The decoder's C scanner, set by JSONDecoder.__init__ (typeshed does not declare it).
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\r\n"
_UNDECODABLE = object()


def _decode_line(line: str) -> Any:
    """One line's JSON value, exactly as json.loads(line) would decode it; _UNDECODABLE where
    json.loads would raise JSONDecodeError (garbage, or anything after the value)."""
    try:
        value, end = _scan_once(line, 0)
    except StopIteration:  # leading whitespace, a byte order mark, an empty line
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return _UNDECODABLE
    except json.JSONDecodeError:
        return _UNDECODABLE
    if line[end:].strip(_JSON_SPACE):
        return _UNDECODABLE
    return value


def merge_events(streams: Iterable[Iterable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Events from several processes in one list ordered by monotonic time (stable for ties)."""
    merged = [event for stream in streams for event in stream]
    merged.sort(key=event_time)
    return merged


def write_events(path: str | os.PathLike[str], events: Iterable[dict[str, Any]]) -> int:
    """Write merged events as one JSONL file (the `--events` log); returns the count. Written
    to a temporary file renamed into place: a full disk never leaves a half log behind."""
    from sqlite_lockprobe.errors import LockprobeError  # not needed by the injected probe

    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for event in events:
                out.write(json.dumps(event, separators=(",", ":")))
                out.write("\n")
                count += 1
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise LockprobeError(f"cannot write event log {target}: {exc.strerror}") from None
    return count


def stream_event_log(
    path: str | os.PathLike[str], skipped: SkippedLines | None = None
) -> Iterator[dict[str, Any]]:
    """The events of a saved log, one at a time, in file order (`write_events` writes them in
    time order), so a log of millions of events is never held in memory. Bad input is one
    clear error: raised before the first event, or at the end when nothing was an event.
    Lines that are not events are dropped, and counted in `skipped` once the log is read."""
    from sqlite_lockprobe.errors import LockprobeError  # not needed by the injected probe

    p = Path(path)
    if p.is_dir():
        raise LockprobeError(f"{p}: is a directory, not an event log")
    try:
        with open(p, "rb"):
            pass
    except FileNotFoundError:
        raise LockprobeError(f"{p}: no such event log") from None
    except OSError as exc:
        raise LockprobeError(f"{p}: cannot read event log ({exc.strerror})") from None
    events = read_events(p, skipped)
    try:
        first = next(events, None)
        if first is None:
            raise LockprobeError(f"{p}: not a lockprobe event log (no events found)")
        yield first
        yield from events  # in C: no Python step per event
    except (OSError, UnicodeDecodeError) as exc:
        raise LockprobeError(f"{p}: cannot read event log ({exc})") from None


def load_event_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A saved event log as a list merged in time order (for small logs and tests)."""
    return merge_events([stream_event_log(path)])
