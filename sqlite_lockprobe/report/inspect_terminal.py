"""Terminal report of `inspect` (rich): the files, the lock table in plain words, the findings.

Each section is first built as plain rows (`*_rows` functions, easy to test), then drawn.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.report.terminal import bullets, hanging
from sqlite_lockprobe.sources.inspect.inspection import CANNOT_SEE, Inspection
from sqlite_lockprobe.sources.inspect.watch import LockChange

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def database_rows(ins: Inspection) -> list[tuple[str, str]]:
    db = ins.database
    rows = [("path", db.path), ("size", human_bytes(db.size_bytes))]
    h = db.header
    if h is None:
        rows.append(("header", "none: an empty file, which SQLite treats as an empty database"))
        return rows
    source = "header" if h.header_page_count_valid else "file size (header count not valid)"
    mode = "WAL" if db.journal_mode == "wal" else "rollback journal"
    rows += [
        ("journal mode", f"{mode} (header {h.write_version}/{h.read_version})"),
        ("page size", f"{h.page_size} bytes"),
        ("pages", f"{db.page_count} (from {source})"),
        ("freelist pages", str(h.freelist_pages)),
        ("text encoding", h.text_encoding_name),
        ("schema format", str(h.schema_format)),
        ("last written by", f"SQLite {h.sqlite_version}"),
        ("change counter", str(h.change_counter)),
        ("user_version", str(h.user_version)),
        ("application_id", f"{h.application_id} (0x{h.application_id:08x})"),
    ]
    if db.header_page_count_exceeds_file:
        rows.append(("note", "the header counts more pages than the file holds"))
    return rows


def wal_rows(ins: Inspection) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if ins.wal is None:
        rows.append(("-wal", "none"))
    else:
        wal = ins.wal
        rows.append(
            ("-wal", f"{human_bytes(wal.size_bytes)}, room for {wal.frames_in_file} frames")
        )
        if wal.header is not None:
            rows.append(("checkpoint sequence", str(wal.header.checkpoint_sequence)))
            rows.append(("salt", f"{wal.header.salt[0]:08x} {wal.header.salt[1]:08x}"))
        elif wal.size_bytes:
            rows.append(("wal header", "not valid"))
    if ins.shm is None:
        rows.append(("-shm", "none"))
        return rows
    rows.append(("-shm", human_bytes(ins.shm.size_bytes)))
    shm = ins.shm.header
    if shm is None:
        rows.append(("WAL index", "not initialised (shorter than its header)"))
        return rows
    state = "valid" if shm.valid else "not valid (being written, or left by a crash)"
    rows += [
        ("WAL index", state),
        ("frames (mxFrame)", str(shm.first.max_frame)),
        ("checkpointed (nBackfill)", str(shm.backfilled)),
        ("not checkpointed", str(shm.frames_not_checkpointed)),
        (
            "read marks",
            "  ".join(f"{i}:{'-' if m is None else m}" for i, m in enumerate(shm.read_marks)),
        ),
        ("transactions (iChange)", str(shm.first.change)),
    ]
    return rows


def journal_rows(ins: Inspection) -> list[tuple[str, str]]:
    j = ins.journal
    if j is None:
        return [("-journal", "none")]
    if j.in_use:
        meaning = "in use by the transaction that holds RESERVED or more"
    elif j.hot:
        meaning = "HOT: left by a writer that died; the next reader rolls it back"
    else:
        meaning = "not hot: header zeroed or empty (kept by PERSIST/TRUNCATE mode, or its writer "
        meaning += "died before changing the database)"
    return [("-journal", f"{human_bytes(j.size_bytes)}: {meaning}")]


def filesystem_rows(ins: Inspection) -> list[tuple[str, str]]:
    fs = ins.filesystem
    text = f"{fs.fstype} at {fs.mount_point or '?'}"
    if fs.is_network:
        text += f"  NETWORK: {fs.network_reason}"
    return [("filesystem", text)]


def holder_rows(ins: Inspection) -> list[tuple[str, ...]]:
    """One row per process: pid, process, user, age, files open, locks, meaning."""
    rows: list[tuple[str, ...]] = []
    for h in ins.holders:
        p = h.process
        name = (p.name if p and p.name else "?") if h.pid is not None else "(OFD lock)"
        if p is not None and not p.alive:
            name += " (exited)"
        cmd = command_line(p.cmdline) if p and p.cmdline else ""
        age = human_age(p.age_seconds(ins.taken_at)) if p else "?"
        locks = ", ".join(f"{lk.name} ({lk.file})" for lk in h.locks) or "-"
        rows.append(
            (
                "?" if h.pid is None else str(h.pid),
                _shorten(cmd, 60) if cmd else name,
                (p.user if p and p.user else "?"),
                age,
                ",".join(h.open_files) or "-",
                locks,
                h.headline,
            )
        )
    return rows


def command_line(argv: tuple[str, ...]) -> str:
    """argv with the program's directory dropped: the name is what tells processes apart."""
    return " ".join((os.path.basename(argv[0]), *argv[1:]))


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _facts_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for key, value in rows:
        table.add_row(key, Text(value))
    return table


def lock_table(ins: Inspection) -> RenderableType:
    rows = holder_rows(ins)
    if not rows:
        return Text(
            f"No process has the database open or holds a lock (source: {ins.lock_source})."
        )
    table = Table(title=f"Lock table (from {ins.lock_source})", title_justify="left")
    # Short values never wrap; lock names (WAL_READ_LOCK(1)) break only between locks.
    table.add_column("pid", no_wrap=True)
    table.add_column("process", overflow="fold")
    for column in ("user", "age", "open"):
        table.add_column(column, no_wrap=True)
    table.add_column("locks")
    table.add_column("what it means")
    for row in rows:
        table.add_row(*map(Text, row))
    return table


def findings_renderable(findings: list[Finding]) -> RenderableType:
    """Each finding in a panel titled with its severity and pattern id (short enough for any
    console); its own title and confidence open the panel."""
    if not findings:
        return Text("No problems found in the file state.", style="green")
    parts: list[RenderableType] = []
    for f in findings:
        body: list[RenderableType] = [
            Text(f.title, style="bold"),
            Text(f"confidence: {f.confidence}", style="dim"),
            Text(""),
            Text(f.explanation),
            *bullets(f.evidence),
        ]
        for advice in f.advice:
            body.append(hanging("  → ", Text(advice.text, style="green")))
            for stack, snippet in advice.snippets.items():
                body.append(Text(f"    {stack}:", style="dim"))
                for line in snippet.split("\n"):
                    code = line.lstrip(" ")
                    indent = " " * (6 + len(line) - len(code))
                    body.append(hanging(indent, Text(code, style="dim")))
        title = Text.assemble((f.severity, _SEVERITY_STYLE[f.severity]), " ", (f.pattern, "bold"))
        parts.append(Panel(Group(*body), title=title, title_align="left"))
    return Group(*parts)


def notes_renderable(ins: Inspection) -> RenderableType:
    parts: list[RenderableType] = [Text("Cannot be seen from outside the processes:", "bold")]
    parts += [hanging("  - ", Text(item, style="dim")) for item in CANNOT_SEE]
    parts += [hanging("  note: ", note) for note in ins.notes]
    return Group(*parts)


def inspection_renderable(ins: Inspection, findings: list[Finding]) -> RenderableType:
    facts = Table.grid(padding=(0, 4))
    facts.add_row(
        _facts_table("Database", database_rows(ins)),
        _facts_table(
            "WAL, journal, filesystem", wal_rows(ins) + journal_rows(ins) + filesystem_rows(ins)
        ),
    )
    return Group(
        facts, Text(), lock_table(ins), Text(), findings_renderable(findings), notes_renderable(ins)
    )


def render_inspection(ins: Inspection, findings: list[Finding], console: Console) -> None:
    console.print(inspection_renderable(ins, findings))


def change_line(change: LockChange) -> str:
    at = datetime.datetime.fromtimestamp(change.at).strftime("%H:%M:%S.%f")[:-3]
    who = "?" if change.pid is None else str(change.pid)
    name = f" ({change.process_name})" if change.process_name else ""
    return f"{at}  pid {who}{name}  {change.change} {change.lock} ({change.kind})"


def render_watch(updates: Iterable[tuple[Inspection, list[LockChange]]], console: Console) -> None:
    """Redraw the lock table on each update and print every lock change as a line above it.
    Returns when `updates` ends; the caller stops it (Ctrl-C)."""
    with Live(Text("inspecting…"), console=console, auto_refresh=False) as live:
        for ins, changes in updates:
            for change in changes:
                live.console.print(change_line(change), highlight=False)
            stamp = datetime.datetime.fromtimestamp(ins.taken_at).strftime("%H:%M:%S")
            view: Any = Group(
                Text(f"{ins.database.path} at {stamp} (Ctrl-C to stop)"), lock_table(ins)
            )
            live.update(view, refresh=True)
