"""The JSON report of `inspect`: the shared envelope with the inspection's sections."""

from __future__ import annotations

from typing import Any

from sqlite_lockprobe.findings import Finding
from sqlite_lockprobe.report.jsonreport import report_document
from sqlite_lockprobe.sources.inspect.inspection import Inspection


def inspection_document(inspection: Inspection, findings: list[Finding]) -> dict[str, Any]:
    return report_document("inspect", findings, **inspection.to_json())
