"""Reading event logs: every line that json.loads reads as an event is one, every other line
(garbage, trailing data, unknown kinds, a torn last line) is skipped, from real files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.events.records import (
    EVENT_FIELDS,
    events_with_json,
    events_with_orjson,
    read_events,
    stream_event_log,
)

CLOSE = '{"k":"close","t":5,"conn":"c1"}'
OPEN = '{"k":"open","t":1,"conn":"c1","worker":"w#0","group":"w","pid":7}'


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def reference(text: str) -> list[dict[str, Any]]:
    """What reading must give: json.loads on each complete line, events of known kinds only."""
    found = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]:
        try:
            event = json.loads(line + "\n")
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("k") in EVENT_FIELDS:
            found.append(event)
    return found


def test_reads_every_event_in_order(tmp_path: Path) -> None:
    log = write(tmp_path / "e.jsonl", f"{OPEN}\n{CLOSE}\n")
    assert list(read_events(log)) == [json.loads(OPEN), json.loads(CLOSE)]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log = write(tmp_path / "e.jsonl", f"{OPEN}\n{CLOSE}")
    assert list(read_events(log)) == [json.loads(OPEN)]


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        '{"k":"close","t":5,',
        f"{CLOSE} trailing",
        f"{CLOSE}{CLOSE}",
        f"{CLOSE},{CLOSE}",
        "\ufeff" + CLOSE,
        "",
        "   ",
        '{"k":"nope","t":1}',
        '{"t":1}',
        "[1, 2]",
        '"close"',
        "17",
        "null",
    ],
)
def test_lines_that_are_not_one_event_are_skipped(tmp_path: Path, line: str) -> None:
    log = write(tmp_path / "e.jsonl", f"{OPEN}\n{line}\n{CLOSE}\n")
    assert list(read_events(log)) == [json.loads(OPEN), json.loads(CLOSE)]


@pytest.mark.parametrize(
    "line", [f"  {CLOSE}", f"{CLOSE}  ", f"\t{CLOSE}\t", f"{CLOSE}\r", f" {CLOSE} \r"]
)
def test_whitespace_around_an_event_is_allowed(tmp_path: Path, line: str) -> None:
    log = write(tmp_path / "e.jsonl", f"{line}\n")
    assert list(read_events(log)) == [json.loads(CLOSE)]


def test_windows_line_ends(tmp_path: Path) -> None:
    log = write(tmp_path / "e.jsonl", f"{OPEN}\r\n{CLOSE}\r\n")
    assert list(read_events(log)) == [json.loads(OPEN), json.loads(CLOSE)]


def test_a_value_never_runs_on_into_the_next_line(tmp_path: Path) -> None:
    log = write(tmp_path / "e.jsonl", '{"k":"close","t":5,\n"conn":"c1"}\n' + CLOSE + "\n")
    assert list(read_events(log)) == [json.loads(CLOSE)]


def test_a_log_with_no_event_is_one_clear_error(tmp_path: Path) -> None:
    log = write(tmp_path / "e.jsonl", "garbage\n[1]\n" + CLOSE)
    with pytest.raises(LockprobeError, match="no events found"):
        list(stream_event_log(log))


LINES = st.one_of(
    st.sampled_from([OPEN, CLOSE, '{"k":"wal","t":3,"bytes":4096}', '{"k":"nope"}', "[]"]),
    st.text(alphabet='{}[]":,0123456789.eE+-kt nul\t\r\\', max_size=30),
)
PADDING = st.sampled_from(["", " ", "\t", "\r", " x", "}", ",1", "\ufeff"])


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(PADDING, LINES, PADDING), max_size=12),
    newline=st.sampled_from(["\n", "\r\n"]),
    torn=st.booleans(),
)
def test_reading_matches_json_loads_line_by_line(
    lines: list[tuple[str, str, str]], newline: str, torn: bool
) -> None:
    text = newline.join(before + line + after for before, line, after in lines)
    if lines and not torn:
        text += newline
    with tempfile.TemporaryDirectory() as tmp:
        log = write(Path(tmp) / "e.jsonl", text)
        expected = reference(text)
        assert list(read_events(log)) == expected
        # Both decoders, whichever read_events uses: orjson where installed, else json.
        for decoder in (events_with_json, events_with_orjson):
            with open(log, encoding="utf-8") as src:
                assert list(decoder(src)) == expected, decoder.__name__


@pytest.mark.parametrize("decoder", [events_with_json, events_with_orjson])
def test_lines_orjson_refuses_are_read_like_json(tmp_path: Path, decoder: Any) -> None:
    """NaN and a lone surrogate: json reads them, orjson does not."""
    lines = ['{"k":"wal","t":1,"bytes":NaN}', '{"k":"close","t":2,"conn":"\\ud800"}', "{bad"]
    text = "\n".join(lines) + "\n"
    log = write(tmp_path / "e.jsonl", text)
    with open(log, encoding="utf-8") as src:
        found = list(decoder(src))
    assert [e["t"] for e in found] == [1, 2]
    assert found == reference(text)
