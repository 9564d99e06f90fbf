"""All pattern detectors, in precedence order (registry.py), and the one entry point:
diagnose(timeline).

Each detector is a pure function from a Timeline to findings. Precedence (causes.py) is applied
inside the detectors themselves, so every wait is reported once, under its true cause, whether a
detector runs alone or with the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.diagnose.registry import PATTERNS
from sqlite_lockprobe.findings import Finding, sort_findings

Detector = Callable[[Timeline], list[Finding]]

# Each registered pattern's module, loaded here and nowhere else: `detect` is its detector.
DETECTORS: dict[str, Detector] = {p.id: importlib.import_module(p.module).detect for p in PATTERNS}


def diagnose(timeline: Timeline) -> list[Finding]:
    """Every finding for this timeline, most harmful first; [] for a healthy workload."""
    findings: list[Finding] = []
    for detect in DETECTORS.values():
        findings.extend(detect(timeline))
    return sort_findings(findings)
