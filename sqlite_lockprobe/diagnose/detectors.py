"""All pattern detectors, in precedence order, and the one entry point: diagnose(timeline).

Each detector is a pure function from a Timeline to findings. Precedence (causes.py) is applied
inside the detectors themselves, so every wait is reported once, under its true cause, whether a
detector runs alone or with the others.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_lockprobe.diagnose import (
    checkpoint_starvation,
    external_holder,
    long_write_transaction,
    network_filesystem,
    no_busy_timeout,
    reader_blocks_writer,
    self_deadlock,
    table_locked,
    unexplained_busy,
    upgrade_deadlock,
    write_convoy,
)
from sqlite_lockprobe.diagnose.model import Timeline
from sqlite_lockprobe.findings import Finding, sort_findings

Detector = Callable[[Timeline], list[Finding]]

DETECTORS: dict[str, Detector] = {
    upgrade_deadlock.PATTERN: upgrade_deadlock.detect,
    self_deadlock.PATTERN: self_deadlock.detect,
    external_holder.PATTERN: external_holder.detect,
    no_busy_timeout.PATTERN: no_busy_timeout.detect,
    reader_blocks_writer.PATTERN: reader_blocks_writer.detect,
    long_write_transaction.PATTERN: long_write_transaction.detect,
    write_convoy.PATTERN: write_convoy.detect,
    checkpoint_starvation.PATTERN: checkpoint_starvation.detect,
    table_locked.PATTERN: table_locked.detect,
    network_filesystem.PATTERN: network_filesystem.detect,
    unexplained_busy.PATTERN: unexplained_busy.detect,
}


def diagnose(timeline: Timeline) -> list[Finding]:
    """Every finding for this timeline, most harmful first; [] for a healthy workload."""
    findings: list[Finding] = []
    for detect in DETECTORS.values():
        findings.extend(detect(timeline))
    return sort_findings(findings)
