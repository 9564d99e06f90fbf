"""lockprobe: find out why an application gets "database is locked", and what to change.

`record()` / `install()` probe this process's own sqlite3 connections (docs/api.md). They are
imported on first use: the probe `lockprobe trace` injects imports this package too, and must
find nothing here but the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Recorder", "__version__", "install", "record"]

if TYPE_CHECKING:
    from sqlite_lockprobe.recorder import Recorder, install, record

_LAZY = frozenset({"Recorder", "install", "record"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from sqlite_lockprobe import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
