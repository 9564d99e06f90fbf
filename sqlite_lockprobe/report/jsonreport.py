"""The machine-readable report (a contract: see docs/json-report.md).

Every JSON document has `schema_version`, `command` and a top-level `findings` list; the
rest is per command. Bump SCHEMA_VERSION only for incompatible changes; adding keys is fine.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from sqlite_lockprobe import __version__
from sqlite_lockprobe.errors import LockprobeError
from sqlite_lockprobe.findings import Finding, sort_findings

SCHEMA_VERSION = 1


def report_document(command: str, findings: list[Finding], **sections: Any) -> dict[str, Any]:
    """The JSON report envelope shared by every command."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "lockprobe", "version": __version__},
        "command": command,
        "findings": [f.to_json() for f in sort_findings(findings)],
        **sections,
    }


def write_json_atomically(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Write the JSON document with `write_text_atomically`."""
    write_text_atomically(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def output_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a report file could not be written at `path`, or None: checked before a run or a
    traced program starts, so that its results are not lost for a typo in a directory."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        return f"{target}: is a directory"
    if not directory.exists():
        return f"{directory}: no such directory"
    if not directory.is_dir():
        return f"{directory}: not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory}: directory not writable"
    return None


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside the target and rename it, so no reader ever sees half
    a report, and a full disk leaves the old file (or none) rather than a corrupt one. Every
    report file (JSON, JUnit XML, timeline, HTML) is written this way. The file gets the mode
    of the one it replaces, or a new file's under the user's umask (not mkstemp's 0600)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise LockprobeError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), _file_mode(target))
            out.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise LockprobeError(f"cannot write {target}: {exc.strerror}") from exc


def _file_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status,
    4.7+): setting it to read it back is process-wide, a race with any thread creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
