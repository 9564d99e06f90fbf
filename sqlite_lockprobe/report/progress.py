"""A live progress line while a run goes on (stderr, so stdout stays clean for --json -)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.text import Text

if TYPE_CHECKING:  # renderers get the sources' results, they do not import the sources
    from sqlite_lockprobe.sources.run.runner import Progress


@contextmanager
def live_progress(enabled: bool, title: str) -> Iterator[Callable[[Progress], None] | None]:
    if not enabled:
        yield None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Live(
        Text(f"{title}: starting"), console=console, transient=True, refresh_per_second=8
    ) as live:

        def update(p: Progress) -> None:
            live.update(
                Text(
                    f"{title}: {p.elapsed:5.1f}s  workers running {p.workers_running}  "
                    f"events recorded {p.events:,}"
                )
            )

        yield update
