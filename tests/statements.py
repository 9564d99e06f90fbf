"""Statements as the trace hook reports them, for tests that run on both probe paths.

sqlite3's own hook (the pure-Python path) expands a statement's parameter values into its
text; the compiled hook (_speedups.StatementList) keeps the text as it was prepared, with its
placeholders (no application data). A test writes the expanded text it expects; either form
of the same statement matches it, and nothing else does."""

from __future__ import annotations

import re
from collections.abc import Iterable

_PLACEHOLDER = re.compile(r"\?\d*|[:@$][A-Za-z_]\w*")


def same_statement(reported: str, expanded: str) -> bool:
    """`reported` is `expanded`, or `expanded` as prepared: a value where each placeholder is."""
    if reported == expanded:
        return True
    parts = _PLACEHOLDER.split(reported)
    if len(parts) == 1:
        return False
    return re.fullmatch(".+?".join(map(re.escape, parts)), expanded, re.DOTALL) is not None


def same_statements(reported: Iterable[str], expanded: Iterable[str]) -> bool:
    reported, expanded = tuple(reported), tuple(expanded)
    return len(reported) == len(expanded) and all(
        same_statement(r, e) for r, e in zip(reported, expanded, strict=True)
    )
