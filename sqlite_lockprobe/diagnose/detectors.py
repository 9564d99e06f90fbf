"""The detector registry (interim: the pattern detectors land with the diagnosis work)."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.findings import Finding, sort_findings

DETECTORS: dict[str, Callable[[Timeline], list[Finding]]] = {}


def diagnose(timeline: Timeline) -> list[Finding]:
    return sort_findings([f for detect in DETECTORS.values() for f in detect(timeline)])
