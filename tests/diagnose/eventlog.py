"""Readable hand-written event lists, for what build_timeline must get right before any
detector runs: times in milliseconds, one process per pid, events in the order the merged
recording has them (by start time).

log = EventLog()
log.open("a", pid=1)
log.call("a", 0, 1, "BEGIN IMMEDIATE")
log.call("b", 2, 50, "INSERT INTO t VALUES (1)", busy=[(3, 1), (10, 2)])  # (t, delay_ms)
timeline = log.timeline()
"""

from __future__ import annotations

from typing import Any

from sqlite_lockprobe.diagnose.model import NS_PER_MS, SQLITE_BUSY, Timeline
from sqlite_lockprobe.diagnose.timeline import build_timeline
from sqlite_lockprobe.events.records import event_time


def ns(t_ms: float) -> int:
    return round(t_ms * NS_PER_MS)


class EventLog:
    """Events as the probe records them; timeline() merges them by time as a recording is."""

    def __init__(self, journal_mode: str = "delete", source: str = "trace python app.py") -> None:
        self.events: list[dict[str, Any]] = [
            {"k": "meta", "t": 0, "pid": 1, "source": source, "journal_mode": journal_mode}
        ]
        self.pids: dict[str, int] = {}
        self.threads: dict[str, int] = {}

    def open(self, conn: str, *, pid: int = 1, timeout_ms: int = 5000, t_ms: float = 0.0) -> None:
        """A connection on its own thread of process `pid`."""
        self.pids[conn] = pid
        self.threads[conn] = 1000 + len(self.threads)
        self.events.append(
            {
                "k": "open",
                "t": ns(t_ms),
                "conn": conn,
                "worker": f"worker-{conn}",
                "group": "g",
                "pid": pid,
                "timeout_ms": timeout_ms,
                "isolation": "",
                "journal_mode": None,
                "instrumented": True,
            }
        )

    def call(
        self,
        conn: str,
        t0_ms: float,
        t1_ms: float,
        sql: str,
        *,
        op: str = "execute",
        stmts: list[str] | None = None,
        in_txn: bool = True,
        failed: bool = False,
        message: str | None = None,
        busy: list[tuple[float, float]] = (),  # type: ignore[assignment]
    ) -> None:
        """One call; `busy` lists its busy-handler calls as (time, sleep in ms), the last of
        a failed call with sleep 0 (the handler gave up)."""
        self.events.append(
            {
                "k": "call",
                "t0": ns(t0_ms),
                "t1": ns(t1_ms),
                "conn": conn,
                "worker": f"worker-{conn}",
                "thread": self.threads[conn],
                "task": None,
                "op": op,
                "sql": sql,
                "stmts": [sql] if stmts is None else stmts,
                "busy": len(busy),
                "err": SQLITE_BUSY if failed else None,
                "ext": SQLITE_BUSY if failed else None,
                "msg": (message or "database is locked") if failed else None,
                "in_txn": in_txn,
                "site": None,
            }
        )
        for n, (t_ms, delay_ms) in enumerate(busy):
            self.events.append(
                {"k": "busy", "t": ns(t_ms), "conn": conn, "n": n, "delay_ms": delay_ms}
            )

    def close(self, conn: str, t_ms: float) -> None:
        self.events.append({"k": "close", "t": ns(t_ms), "conn": conn})

    def merged(self) -> list[dict[str, Any]]:
        return sorted(self.events, key=event_time)

    def timeline(self) -> Timeline:
        return build_timeline(self.merged())
