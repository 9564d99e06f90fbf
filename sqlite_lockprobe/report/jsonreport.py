"""The machine-readable report (a contract: see docs/json-report.md).

Every JSON document has `schema_version`, `command` and a top-level `findings` list; the
rest is per command. Bump SCHEMA_VERSION only for incompatible changes; adding keys is fine.
"""

from __future__ import annotations

import json
import os
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


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside the target and rename it, so no reader ever sees half
    a report, and a full disk leaves the old file (or none) rather than a corrupt one. Every
    report file (JSON, JUnit XML, timeline, HTML) is written this way."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise LockprobeError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise LockprobeError(f"cannot write {target}: {exc.strerror}") from exc
