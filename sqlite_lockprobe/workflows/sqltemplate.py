"""SQL text with the values taken out: what a scenario made from a trace may keep.

A traced statement's text can carry the application's data (a literal in the SQL, or a bound
parameter that the probe saw expanded). A scenario keeps the statement's shape (its tables,
columns, clauses: what decides the locks) and puts generated values where the data was, so
the file can be shared. Comments are dropped too: they are free text.
"""

from __future__ import annotations

import re

# The run engine's own parameters (docs/scenario-format.md): values it generates, kept.
RUN_PARAMETERS = frozenset(("worker", "iteration", "group", "pid"))

# What a bound parameter becomes: a number unique per worker and pass (a UNIQUE column does
# not collide), plus the parameter's position in the statement.
GENERATED_NUMBER = "(:worker * 1000000000 + :iteration * 100 + {n})"
# What a string or blob literal becomes.
GENERATED_TEXT = "'v'"
GENERATED_BLOB = "x'00'"
# String arguments of SQLite's date/time and JSON functions are formats, not data
# (https://sqlite.org/lang_datefunc.html, https://sqlite.org/json1.html#path_arguments).
_FORMAT_TEXT = re.compile(
    r"(now|localtime|utc|unixepoch|auto|julianday|subsec|subsecond|"
    r"[%$][\w.%\[\]#-]*|[+-]?\d+(\.\d+)? (second|minute|hour|day|month|year)s?|"
    r"start of (month|year|day)|weekday \d)",
    re.IGNORECASE,
)
# Numbers that say how much, not what: function arguments (randomblob(3000)), LIMIT, OFFSET.
_COUNT_KEYWORDS = frozenset(("LIMIT", "OFFSET"))
_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*")
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+|(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_PARAMETER = re.compile(r"\?\d*|[:@$][A-Za-z_]\w*")
_QUOTED_NAME = {'"': '"', "`": "`", "[": "]"}


def generalise_sql(sql: str) -> str:
    """`sql` with every literal value and bound parameter replaced by a generated value:
    strings by 'v' (format strings of date/time and JSON functions are kept), blobs by x'00',
    numbers by 1 (0 and 1 are kept, and so are function arguments and LIMIT/OFFSET counts),
    parameters (?, ?NNN, :name, @name, $name) by a number unique per worker and pass. The run
    engine's own :worker, :iteration, :group and :pid are kept. Identifiers stay as written."""
    out: list[str] = []
    calls: list[bool] = []  # per open parenthesis: is it a function call's?
    last_word = ""
    parameters = 0
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
            continue
        if c in "xX" and sql.startswith("'", i + 1) and not _word_before(out):
            i = _string_end(sql, i + 1)
            out.append(GENERATED_BLOB)
            last_word = ""
            continue
        if c == "'":
            end = _string_end(sql, i)
            text = sql[i + 1 : end - 1].replace("''", "'")
            keep = bool(calls and calls[-1] and _FORMAT_TEXT.fullmatch(text))
            out.append(sql[i:end] if keep else GENERATED_TEXT)
            i, last_word = end, ""
            continue
        if c in _QUOTED_NAME:
            close = _QUOTED_NAME[c]
            end = sql.find(close, i + 1)
            end = n if end < 0 else end + 1
            out.append(sql[i:end])
            i, last_word = end, ""
            continue
        word = _WORD.match(sql, i)
        if word:
            out.append(word.group())
            last_word = word.group()
            i = word.end()
            continue
        number = _NUMBER.match(sql, i)
        if number:
            text = number.group()
            in_call = bool(calls and calls[-1])
            keep = text in ("0", "1") or in_call or last_word.upper() in _COUNT_KEYWORDS
            out.append(text if keep else "1")
            i, last_word = number.end(), ""
            continue
        parameter = _PARAMETER.match(sql, i)
        if parameter:
            name = parameter.group()
            if name[0] == ":" and name[1:] in RUN_PARAMETERS:
                out.append(name)
            else:
                parameters += 1
                out.append(GENERATED_NUMBER.format(n=parameters))
            i, last_word = parameter.end(), ""
            continue
        if c == "(":
            calls.append(bool(last_word) and last_word.upper() not in _NOT_FUNCTIONS)
        elif c == ")" and calls:
            calls.pop()
        if not c.isspace():
            last_word = ""
        out.append(c)
        i += 1
    return "".join(out).strip()


# Words before "(" that open a list, not a function call's arguments.
_NOT_FUNCTIONS = frozenset(
    (
        "VALUES",
        "IN",
        "AS",
        "ON",
        "USING",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "SELECT",
        "SET",
        "EXISTS",
        "FROM",
        "JOIN",
        "BY",
        "WHEN",
        "THEN",
        "ELSE",
        "IS",
        "LIKE",
        "BETWEEN",
        "KEY",
        "INTO",
        "TABLE",
        "RETURNING",
        "CHECK",
        "DEFAULT",
        "OVER",
        "FILTER",
        "WITH",
        "RECURSIVE",
        "UNION",
        "ALL",
        "DISTINCT",
        "HAVING",
        "LIMIT",
        "OFFSET",
        "CASE",
        "END",
        "MATCH",
        "GLOB",
        "REGEXP",
    )
)


def _word_before(out: list[str]) -> bool:
    """Whether the text so far ends in a word character (then x'..' is not a blob: prefix'..')."""
    return bool(out) and bool(out[-1]) and (out[-1][-1].isalnum() or out[-1][-1] == "_")


def _string_end(sql: str, start: int) -> int:
    """The index just past the string literal that opens at `start` ('' is a quote inside)."""
    i = start + 1
    while True:
        end = sql.find("'", i)
        if end < 0:
            return len(sql)
        if sql.startswith("''", end):
            i = end + 2
            continue
        return end + 1
