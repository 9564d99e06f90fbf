"""Fitting names and SQL into terminal columns without breaking an identifier mid-word.

A pipe or a CI log gets 80 columns. Worker names tell workers apart by their end (`#0`,
`_immediate#1`), so they are shortened in the middle; group names are folded at their own
separators; SQL is cut to one line. What is shown is always a prefix and suffix of the real
name, so it can still be found in the JSON report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ELLIPSIS = "…"
# Where an identifier may be folded onto the next line: after `_ - . / :` or a space, and
# between the words of a CamelCase name (ThreadPool|Executor-0_0).
_SEPARATORS = re.compile(r"(?<=[_\-./: ])|(?<=[a-z])(?=[A-Z])")


def ellipsize_middle(name: str, width: int) -> str:
    """`name` within `width` characters, its middle replaced by an ellipsis: a worker's `#N`
    suffix is kept whole, and as much of the end as of the start (the end is what differs
    between `read_write_transaction#0` and `read_write_transaction_immediate#0`)."""
    if len(name) <= width:
        return name
    if width < 2:
        return name[:width]
    head, sep, tail = name.rpartition("#")
    suffix = f"{sep}{tail}" if head and tail.isdigit() and len(tail) + 3 <= width else ""
    base = name[: len(name) - len(suffix)]
    room = width - len(suffix) - 1
    start = room // 2
    end = room - start
    return base[:start] + ELLIPSIS + (base[-end:] if end else "") + suffix


def fold_identifier(name: str, width: int, tail: str = "") -> list[str]:
    """`name` as lines of at most `width` characters, broken only after `_ - . / :` or a
    space, or between the words of a CamelCase name; `tail` (such as ` (2 thr)`) is never
    broken and goes on the last line if it fits. A piece longer than `width` with no
    separator in it is the one thing cut mid-word."""
    width = max(1, width)
    pieces = [p for p in _SEPARATORS.split(name) if p]
    lines: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(piece) > width:
            lines.append(current)
            current = ""
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        current += piece
    if tail:
        if current and len(current) + len(tail) <= width:
            current += tail
        else:
            if current:
                lines.append(current)
            current = tail.strip()
    if current or not lines:
        lines.append(current)
    return [line.rstrip() for line in lines]


def one_line(text: str, width: int) -> str:
    """`text` on one line (runs of whitespace made one space), cut to `width` with an
    ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    return flat[: max(0, width - 1)] + ELLIPSIS


def pack_words(words: Sequence[str], width: int, joiner: str = ", ") -> list[str]:
    """`words` (pattern ids, say) joined by `joiner` into lines of at most `width`
    characters, each word whole on one line (a word longer than `width` alone on its own)."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + len(joiner) + len(word) <= width:
            lines[-1] += joiner + word
        else:
            if lines:
                lines[-1] += joiner.rstrip()
            lines.append(word)
    return lines
