"""lockprobe: find out why an application gets "database is locked", and what to change.

The public API (docs/api.md): run a scenario (`load_scenario`, `run_scenario`), trace a
command (`trace_program`), analyse events (`analyze`, `stream_event_log`), inspect a database
file (`inspect_database`, `inspection_findings`), record this process (`record`, `install`,
`Recorder`). Each is imported on first use: the probe `lockprobe trace` injects imports this
package too, and must find nothing here but the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sqlite_lockprobe.diagnose.analysis import Analysis, analyze
    from sqlite_lockprobe.errors import LockprobeError
    from sqlite_lockprobe.events.records import stream_event_log
    from sqlite_lockprobe.findings import Finding
    from sqlite_lockprobe.recorder import Recorder, install, record
    from sqlite_lockprobe.sources.inspect.inspection import inspect_database, inspection_findings
    from sqlite_lockprobe.sources.run.runner import run_scenario
    from sqlite_lockprobe.sources.run.scenario import load_scenario
    from sqlite_lockprobe.sources.trace import trace_program

# Each public name and the module it lives in, loaded when the name is first asked for.
_LAZY = {
    "load_scenario": "sqlite_lockprobe.sources.run.scenario",
    "run_scenario": "sqlite_lockprobe.sources.run.runner",
    "trace_program": "sqlite_lockprobe.sources.trace",
    "analyze": "sqlite_lockprobe.diagnose.analysis",
    "Analysis": "sqlite_lockprobe.diagnose.analysis",
    "stream_event_log": "sqlite_lockprobe.events.records",
    "inspect_database": "sqlite_lockprobe.sources.inspect.inspection",
    "inspection_findings": "sqlite_lockprobe.sources.inspect.inspection",
    "Finding": "sqlite_lockprobe.findings",
    "LockprobeError": "sqlite_lockprobe.errors",
    "record": "sqlite_lockprobe.recorder",
    "install": "sqlite_lockprobe.recorder",
    "Recorder": "sqlite_lockprobe.recorder",
}
__all__ = [
    "__version__",
    "load_scenario",
    "run_scenario",
    "trace_program",
    "analyze",
    "Analysis",
    "stream_event_log",
    "inspect_database",
    "inspection_findings",
    "Finding",
    "LockprobeError",
    "record",
    "install",
    "Recorder",
]  # every name of _LAZY (tests/test_public_api.py)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
