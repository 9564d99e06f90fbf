"""The lock timeline in the Chrome trace event format, which ui.perfetto.dev and
chrome://tracing open (format: "Trace Event Format", Google, docs.google.com/document/d/
1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU).

One track per connection (pid = the process, tid = a number of ours, named after the worker,
the connection and its OS thread), complete events (`X`) for lock holds, busy waits and the
other calls, instant events (`i`) where a call failed with SQLITE_BUSY, flow arrows (`s`/`f`)
from each waiter to the holders of the lock during its wait, and the -wal size as a counter.
Times are whole microseconds since the first recorded moment: rounding every time the same
way keeps spans that nest in nanoseconds nested in the file, as the viewers require.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlite_lockprobe import __version__
from sqlite_lockprobe.diagnose.chain import blockers
from sqlite_lockprobe.diagnose.evidence import code_name, lock_name, short_sql
from sqlite_lockprobe.diagnose.model import Actor, LockHold, Timeline

# Our track ids start above Linux's largest pid (pid_max is at most 2**22), so a viewer never
# takes one of them for a process's main thread (tid == pid).
TID_BASE = 10_000_000
# Arrows from one wait to at most this many holders: beyond that they hide the picture.
MAX_FLOWS_PER_WAIT = 8
# Parents before children when two spans start and end at the same microsecond.
_PRIORITY = {"write lock": 0, "read lock": 1, "busy wait": 2, "call": 3}


@dataclass
class _Span:
    """One complete event before it is placed on a track."""

    actor: Actor
    start_us: int
    end_us: int
    name: str
    cat: str
    args: dict[str, Any]
    cname: str | None = None
    tid: int = 0
    source: object = field(default=None, repr=False)


def chrome_trace(timeline: Timeline, title: str = "lockprobe") -> dict[str, Any]:
    """The timeline as a Chrome trace JSON object (`{"traceEvents": [...], ...}`)."""
    origin = timeline.origin_ns

    def us(t: int) -> int:
        return max(0, (t - origin) // 1000)

    spans = _spans(timeline, us)
    events: list[dict[str, Any]] = []
    by_source = _place_on_tracks(spans, events)
    for s in spans:
        event = {
            "name": s.name,
            "cat": s.cat,
            "ph": "X",
            "ts": s.start_us,
            "dur": s.end_us - s.start_us,
            "pid": s.actor.pid,
            "tid": s.tid,
            "args": s.args,
        }
        if s.cname:
            event["cname"] = s.cname
        events.append(event)
    for w in timeline.waits:
        if not w.failed:
            continue
        events.append(
            {
                "name": code_name(w.code),
                "cat": "busy",
                "ph": "i",
                "s": "t",
                "ts": us(w.t1),
                "pid": w.waiter.pid,
                "tid": by_source[id(w)].tid,
                "args": {"sql": w.call.sql, "after_ms": round(w.duration_ms, 3)},
            }
        )
    events.extend(_flows(timeline, by_source, us))
    main_pid = min((s.actor.pid for s in spans), default=0)
    for sample in timeline.wal_samples:
        events.append(
            {
                "name": "-wal bytes",
                "ph": "C",
                "ts": us(sample.t),
                "pid": main_pid,
                "tid": 0,
                "args": {"bytes": sample.wal_bytes},
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "tool": f"lockprobe {__version__}",
            "title": title,
            "journal_mode": timeline.journal_mode,
            "origin_monotonic_ns": origin,
        },
    }


def _spans(timeline: Timeline, us: Any) -> list[_Span]:
    spans: list[_Span] = []
    for hold in (*timeline.write_holds, *timeline.read_holds):
        kind = "write lock" if hold.kind == "write" else "read lock"
        spans.append(
            _Span(
                hold.holder,
                us(hold.t0),
                us(hold.t1),
                f"{kind}: {short_sql(hold.taken_by, 40)}",
                kind,
                _hold_args(hold, timeline),
                source=hold,
            )
        )
    waiting_calls = {id(w.call) for w in timeline.waits}
    for w in timeline.waits:
        outcome = f"failed {code_name(w.code)}" if w.failed else "got the lock"
        spans.append(
            _Span(
                w.waiter,
                us(w.t0),
                us(w.t1),
                f"busy wait ({w.phase}): {outcome}",
                "busy wait",
                {
                    "sql": w.call.sql,
                    "phase": w.phase,
                    "busy_handler_calls": w.handler_calls,
                    "busy_timeout_ms": w.timeout_ms,
                    "failed": w.failed,
                    "result": code_name(w.code) if w.failed else "ok",
                    "had_read": w.had_read,
                },
                cname="terrible" if w.failed else "bad",
                source=w,
            )
        )
    for c in timeline.calls:
        if id(c) in waiting_calls:
            continue
        args: dict[str, Any] = {"sql": c.sql, "statements": list(c.statements)}
        if c.error is not None:
            args["result"] = code_name(c.ext_error or c.error)
        spans.append(
            _Span(
                c.actor,
                us(c.t0),
                us(c.t1),
                f"{c.op}: {short_sql(c.sql, 40)}" if c.sql else c.op,
                "call",
                args,
                source=c,
            )
        )
    return spans


def _hold_args(hold: LockHold, timeline: Timeline) -> dict[str, Any]:
    return {
        "lock": lock_name(hold, timeline),
        "taken_by": hold.taken_by,
        "released_by": hold.released_by,
        "implicit_begin": hold.implicit_begin,
        "held_ms": round(hold.duration_ms, 3),
        "in_sqlite_ms": round(hold.in_statements_ns / 1e6, 3),
        "idle_in_application_ms": round(hold.idle_ns / 1e6, 3),
    }


def _place_on_tracks(spans: list[_Span], events: list[dict[str, Any]]) -> dict[int, _Span]:
    """Give every span a track (tid) where it nests properly; name the tracks and processes
    with metadata events. A connection's spans nest (a wait inside its transaction's lock
    hold); a span that would overlap partly goes on an extra track of the same connection."""
    order: dict[str, int] = {}
    actors: dict[str, Actor] = {}
    for s in sorted(spans, key=lambda s: (s.actor.group, s.actor.worker, s.start_us)):
        if s.actor.conn not in order:
            order[s.actor.conn] = len(order)
            actors[s.actor.conn] = s.actor
    lanes: dict[tuple[str, int], list[_Span]] = {}  # open spans per track, innermost last
    tids: dict[tuple[str, int], int] = {}
    for s in sorted(spans, key=lambda s: (s.start_us, -s.end_us, _PRIORITY[s.cat])):
        lane = 0
        while True:
            stack = lanes.setdefault((s.actor.conn, lane), [])
            while stack and stack[-1].end_us <= s.start_us:
                stack.pop()
            if not stack or s.end_us <= stack[-1].end_us:
                stack.append(s)
                break
            lane += 1
        key = (s.actor.conn, lane)
        if key not in tids:
            tids[key] = TID_BASE + len(tids)
        s.tid = tids[key]
    pids: dict[int, set[str]] = {}
    for actor in actors.values():
        pids.setdefault(actor.pid, set()).add(actor.group)
    for pid, groups in sorted(pids.items()):
        label = f"pid {pid}: {', '.join(sorted(groups))}"
        events.append(_meta("process_name", pid, 0, {"name": label}))
    for (conn, lane), tid in sorted(tids.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        actor = actors[conn]
        name = f"{actor.worker} · {conn}"
        if actor.task and actor.task != actor.worker:
            name += f" · task {actor.task}"
        name += f" (thread {actor.thread})"
        if lane:
            name += f" overlap {lane}"
        events.append(_meta("thread_name", actor.pid, tid, {"name": name}))
        events.append(
            _meta("thread_sort_index", actor.pid, tid, {"sort_index": order[conn] * 10 + lane})
        )
    return {id(s.source): s for s in spans}


def _meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "ts": 0, "args": args}


def _flows(timeline: Timeline, by_source: dict[int, _Span], us: Any) -> list[dict[str, Any]]:
    """An arrow from the start of each wait to each hold that blocked it, landing inside the
    hold at the moment the wait began (or the hold began, if later)."""
    flows: list[dict[str, Any]] = []
    next_id = 1
    for w in timeline.waits:
        start = by_source[id(w)]
        for hold in blockers(w, timeline)[:MAX_FLOWS_PER_WAIT]:
            target = by_source[id(hold)]
            land = min(max(us(w.t0), target.start_us), target.end_us)
            common = {"name": "waits for", "cat": "lock", "id": next_id}
            flows.append(
                {
                    **common,
                    "ph": "s",
                    "ts": start.start_us,
                    "pid": start.actor.pid,
                    "tid": start.tid,
                }
            )
            flows.append(
                {
                    **common,
                    "ph": "f",
                    "bp": "e",
                    "ts": land,
                    "pid": target.actor.pid,
                    "tid": target.tid,
                }
            )
            next_id += 1
    return flows
