"""Process groups: one OS process per worker, each writing its own event file.

Processes are started with the "spawn" method: forking a process that already runs threads
(the event flusher, thread groups) can copy held locks into the child."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

from sqlite_lockprobe.events.eventfile import FILE_SUFFIX, EventFile
from sqlite_lockprobe.probe.gctuning import fewer_collections
from sqlite_lockprobe.sources.run.scenario import Group
from sqlite_lockprobe.sources.run.workers.program import (
    RunControl,
    run_worker_sync,
    worker_name,
)

SPAWN = multiprocessing.get_context("spawn")


def _process_main(
    control: RunControl, group: Group, index: int, events_path: str, ready: Any
) -> None:
    # A terminal's Ctrl-C reaches the whole foreground process group, workers included: the
    # parent stops the run (RunControl, then terminate after a grace period), so a worker
    # ignores it rather than dying with a traceback on the user's screen.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    events = EventFile(events_path)
    events.start_flusher()
    try:
        with fewer_collections():
            run_worker_sync(
                control, group, index, events.append, None, "process", ready, events.flush
            )
    except KeyboardInterrupt:  # one that came before SIGINT was ignored: end as stopped
        pass
    finally:
        events.close()


class ProcessGroup:
    """Starts a group's processes, each with its own event file in `event_dir`."""

    def __init__(self, control: RunControl, group: Group, event_dir: Path, ready: Any) -> None:
        self.group = group
        names = [f"{group.name}-{i}{FILE_SUFFIX}" for i in range(group.count)]
        self.event_files = [event_dir / name for name in names]
        self.processes = [
            SPAWN.Process(
                target=_process_main,
                args=(control, group, i, str(path), ready),
                name=worker_name(group, i),
                daemon=True,
            )
            for i, path in enumerate(self.event_files)
        ]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.processes)

    def join(self, timeout: float | None = None) -> None:
        for process in self.processes:
            process.join(timeout)

    def terminate(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(5)

    def exit_codes(self) -> dict[str, int | None]:
        return {p.name: p.exitcode for p in self.processes}

    def killed(self) -> list[tuple[str, int | None, str]]:
        """(worker, pid, signal name) of the processes that a signal ended."""
        out = []
        for p in self.processes:
            if p.exitcode is not None and p.exitcode < 0:
                out.append((p.name, p.pid, signal.Signals(-p.exitcode).name))
        return out

    def existing_event_files(self) -> list[Path]:
        return [p for p in self.event_files if p.exists() and os.path.getsize(p) > 0]
