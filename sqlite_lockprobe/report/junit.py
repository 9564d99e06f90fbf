"""JUnit XML for `lockprobe check`: one test suite, one test case per scenario and limit.

The dialect every CI reader accepts (GitHub test-report actions, GitLab `artifacts:reports:
junit`, Jenkins `junit`): `<testsuites>` around one `<testsuite>`, `classname` + `name` per
case, a `<failure message=...>` for a limit that does not hold.
"""

from __future__ import annotations

import datetime
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # renderers get the sources' results, they do not import the sources
    from sqlite_lockprobe.workflows.checking import CheckResult


SUITE_NAME = "lockprobe check"
# Characters XML 1.0 cannot carry at all (SQL and error messages may contain them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("?", text)


def junit_xml(results: Sequence[CheckResult]) -> str:
    """The JUnit document. The run's time goes on each scenario's `completed` case (the limits
    are judged on that same run, in no time), so the suite's time is the real total."""
    cases = [(r, t) for r in results for t in r.results]
    failures = sum(1 for _, t in cases if not t.passed)
    total_time = sum(r.outcome.wall_seconds for r in results)
    root = ET.Element(
        "testsuites",
        name=SUITE_NAME,
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        time=f"{total_time:.3f}",
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name=SUITE_NAME,
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{total_time:.3f}",
        timestamp=datetime.datetime.now().replace(microsecond=0).isoformat(),
        hostname=socket.gethostname(),
    )
    for result, threshold in cases:
        seconds = result.outcome.wall_seconds if threshold is result.results[0] else 0.0
        case = ET.SubElement(
            suite,
            "testcase",
            classname=_clean(f"lockprobe.{result.scenario.name}"),
            name=_clean(threshold.name),
            time=f"{seconds:.3f}",
            file=_clean(result.scenario.source),
        )
        if not threshold.passed:
            failure = ET.SubElement(
                case,
                "failure",
                message=_clean(f"{result.scenario.name}: {threshold.message}"),
                type=threshold.name,
            )
            failure.text = _clean(_failure_detail(result))
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'


def _failure_detail(result: CheckResult) -> str:
    """What a reader of the CI page needs next: the scenario, its findings in one line each."""
    lines = [f"scenario {result.scenario.name} ({result.scenario.source})"]
    lines += [f"{t.name}: {t.message}" for t in result.failures]
    findings = result.analysis.findings
    lines.append(f"findings: {len(findings) or 'none'}")
    lines += [f"  {f.severity} {f.pattern}: {f.title}" for f in findings]
    return "\n".join(lines)
