"""Thread groups: one OS thread per worker, in the lockprobe process."""

from __future__ import annotations

import threading
from typing import Any

from sqlite_lockprobe.probe.capi import Emit
from sqlite_lockprobe.sources.run.scenario import Group
from sqlite_lockprobe.sources.run.workers.program import RunControl, run_worker_sync, worker_name
from sqlite_lockprobe.sources.run.workers.session import Session


class ThreadGroup:
    """Starts a group's threads (they wait at the start gate) and joins them."""

    def __init__(self, control: RunControl, group: Group, emit: Emit, ready: Any) -> None:
        self.group = group
        self.shared = (
            Session(control.spec(group), emit, f"{group.name}#shared", shared=True)
            if group.connection == "shared"
            else None
        )
        self.threads = [
            threading.Thread(
                target=run_worker_sync,
                args=(control, group, i, emit, self.shared, "thread", ready),
                name=worker_name(group, i),
                daemon=True,
            )
            for i in range(group.count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def alive(self) -> int:
        return sum(t.is_alive() for t in self.threads)

    def join(self, timeout: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout)
        if self.shared is not None and not self.alive():
            self.shared.close()
            self.shared = None
