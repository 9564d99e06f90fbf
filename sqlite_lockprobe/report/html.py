"""`--html FILE`: the report as one self-contained HTML page (inline CSS and SVG, no script,
font or style from the network), so it opens offline and can be attached to a ticket.

The page shows the header facts, the per-group table, every finding (explanation, evidence,
advice with snippets) and an SVG timeline of the worst window (report/window.py) and of the
whole run; hovering a bar shows its details (SVG <title>). Like pyinstrument's HTML
renderer, it embeds the JSON report (`<script type="application/json" id="lockprobe-report">`)
so tools can read the data back from the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from sqlite_lockprobe import __version__
from sqlite_lockprobe.diagnose.analysis import Analysis
from sqlite_lockprobe.diagnose.evidence import code_name, lock_name
from sqlite_lockprobe.diagnose.model import NS_PER_MS, Timeline
from sqlite_lockprobe.diagnose.stats import GroupStats
from sqlite_lockprobe.findings import Finding, sort_findings
from sqlite_lockprobe.report.window import choose_window, fit_name, worker_names

SVG_WIDTH = 960
LABEL_PX = 290
LABEL_CHARS = 39  # what fits in LABEL_PX at the labels' 12px monospace
ROW_PX = 22
# The whole-run picture shows at most this many connections (those that waited or held the
# lock longest); every rectangle is a DOM node, so a huge run stays light to open.
MAX_RUN_ROWS = 40
MAX_RUN_SPANS = 20_000
_COLOURS = {"write": "#b0409a", "read": "#5b8bd6", "wait": "#f0b429", "busy": "#d62d20"}


@dataclass(frozen=True)
class _Bar:
    """One rectangle on a row: kind in _COLOURS, times in ns, the tooltip text."""

    kind: str
    t0: int
    t1: int
    tip: str


def render_html(
    title: str,
    facts: Sequence[tuple[str, str]],
    analysis: Analysis,
    document: dict[str, Any],
) -> str:
    """The page. `facts` are the header's (label, value) pairs; `document` is the JSON report
    of the same analysis, embedded as data."""
    timeline = analysis.timeline
    parts = [
        f"<h1>lockprobe · {escape(title)}</h1>",
        _facts(facts),
        _groups(analysis),
        _window_section(timeline),
        _findings(analysis.findings),
        _run_section(timeline),
        f"<footer>lockprobe {escape(__version__)} · data: the embedded JSON report "
        f"(<code>#lockprobe-report</code>)</footer>",
    ]
    data = json.dumps(document).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lockprobe · {escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + f'\n<script type="application/json" id="lockprobe-report">{data}</script>\n'
        + "</body></html>\n"
    )


def _facts(facts: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def _groups(analysis: Analysis) -> str:
    if not analysis.timeline.calls:
        return ""
    summary = analysis.summary
    groups: list[GroupStats] = list(summary.groups)
    if len(groups) > 1:
        groups.append(summary.total)
    head = (
        "<tr><th>group</th><th>kind</th><th>workers</th><th>calls</th><th>commits</th>"
        "<th>rollbacks</th><th>errors</th><th>waits</th><th>p50 ms</th><th>p99 ms</th>"
        "<th>max ms</th><th>commits/s</th></tr>"
    )
    body = []
    for g in groups:
        errors = ", ".join(f"{n} × {name}" for name, n in g.errors.items()) or "-"
        w = g.waits
        cells = [
            g.group,
            g.kind,
            str(g.workers),
            str(g.calls),
            str(g.commits),
            str(g.rollbacks),
            errors,
            str(w.count),
            *(f"{v:,.1f}" if w.count else "-" for v in (w.p50_ms, w.p99_ms, w.max_ms)),
            f"{g.commits_per_second:,.0f}",
        ]
        cls = ' class="total"' if g is summary.total else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f'<h2>Workers</h2><table class="groups">{head}{"".join(body)}</table>'


def _findings(findings: list[Finding]) -> str:
    ordered = sort_findings(findings)
    if not ordered:
        return (
            '<h2>Diagnosis</h2><p class="healthy">No lock problems found: no busy timeouts, '
            "no upgrade deadlocks, no long lock holds.</p>"
        )
    out = [f"<h2>Diagnosis: {len(ordered)} finding(s), most harmful first</h2>"]
    for f in ordered:
        evidence = "".join(f"<li>{escape(line)}</li>" for line in f.evidence)
        advice = []
        for a in f.advice:
            snippets = "".join(
                f'<div class="snippet"><span>{escape(stack)}</span>'
                f"<pre><code>{escape(code)}</code></pre></div>"
                for stack, code in a.snippets.items()
            )
            advice.append(f"<li><p>{escape(a.text)}</p>{snippets}</li>")
        out.append(
            f'<section class="finding {escape(f.severity)}" data-pattern="{escape(f.pattern)}">'
            f'<h3><span class="sev">{escape(f.severity)}</span> '
            f"<code>{escape(f.pattern)}</code>: {escape(f.title)}</h3>"
            f'<p class="meta">confidence: {escape(f.confidence)}{_database_of(f)}</p>'
            f'<p class="explanation">{escape(f.explanation)}</p>'
            f'<h4>Evidence</h4><ul class="evidence">{evidence}</ul>'
            f'<h4>What to change</h4><ul class="advice">{"".join(advice)}</ul></section>'
        )
    return "\n".join(out)


def _database_of(finding: Finding) -> str:
    if finding.database is None and finding.journal_mode is None:
        return ""
    where = finding.database or "in-memory databases"
    return f" · database: {escape(where)} (journal mode {escape(str(finding.journal_mode))})"


def _window_section(timeline: Timeline) -> str:
    window = choose_window(timeline)
    if window is None:
        return ""
    rows = [
        (
            f"{fit_name(window.workers.get(conn, conn), LABEL_CHARS - 9)} ({role})",
            _bars(timeline, conn),
        )
        for conn, role in window.roles.items()
    ]
    arrows = [
        (window.worst.waiter.conn, h.holder.conn, max(window.worst.t0, h.t0)) for h in window.holds
    ]
    order = list(window.roles)
    svg = _svg(rows, window.start_ns, window.end_ns, timeline.origin_ns, arrows, order)
    return f'<h2>{escape(window.title)}</h2><div class="timeline">{svg}</div>{_LEGEND}'


def _run_section(timeline: Timeline) -> str:
    if not timeline.calls:
        return ""
    names = worker_names(timeline)
    weight: dict[str, int] = {}
    for w in timeline.waits:
        weight[w.waiter.conn] = weight.get(w.waiter.conn, 0) + (w.t1 - w.t0)
    for h in timeline.write_holds:
        weight[h.holder.conn] = weight.get(h.holder.conn, 0) + (h.t1 - h.t0)
    conns = sorted(names, key=lambda c: (-weight.get(c, 0), names[c]))[:MAX_RUN_ROWS]
    conns.sort(key=lambda c: names[c])
    rows = [(fit_name(names[c], LABEL_CHARS), _bars(timeline, c)) for c in conns]
    if sum(len(bars) for _, bars in rows) > MAX_RUN_SPANS:
        return "<h2>Whole run</h2><p>Too many spans to draw; open the --timeline file.</p>"
    start = timeline.origin_ns
    end = max(c.t1 for c in timeline.calls)
    note = (
        f" ({len(conns)} of {len(names)} connections: those that waited or held the lock longest)"
        if len(names) > len(conns)
        else ""
    )
    svg = _svg(rows, start, end, timeline.origin_ns, [], conns)
    return (
        f"<details><summary>Whole run{escape(note)}</summary>"
        f'<div class="timeline">{svg}</div>{_LEGEND}</details>'
    )


def _bars(timeline: Timeline, conn: str) -> list[_Bar]:
    bars: list[_Bar] = []
    for hold in (*timeline.read_holds, *timeline.write_holds):
        if hold.holder.conn != conn:
            continue
        bars.append(
            _Bar(
                hold.kind,
                hold.t0,
                hold.t1,
                f"{lock_name(hold, timeline)} held {hold.duration_ms:,.1f} ms, taken by "
                f"{hold.taken_by}, released by {hold.released_by}",
            )
        )
    for w in timeline.waits:
        if w.waiter.conn != conn:
            continue
        outcome = f"failed with {code_name(w.code)}" if w.failed else "got the lock"
        tip = (
            f"waited {w.duration_ms:,.1f} ms in {w.phase} ({w.handler_calls} busy-handler "
            f"calls, busy_timeout {w.timeout_ms} ms): {outcome}; {w.call.sql}"
        )
        bars.append(_Bar("wait", w.t0, w.t1, tip))
        if w.failed:
            bars.append(_Bar("busy", w.t1, w.t1, f"{code_name(w.code)}: {w.call.sql}"))
    return bars


def _svg(
    rows: Sequence[tuple[str, list[_Bar]]],
    start: int,
    end: int,
    origin: int,
    arrows: Iterable[tuple[str, str, int]],
    order: Sequence[str],
) -> str:
    """Rows of bars over [start, end], a time axis, and arrows (waiter conn, holder conn, t)."""
    span = max(end - start, 1)
    plot = SVG_WIDTH - LABEL_PX - 10
    height = ROW_PX * len(rows) + 30

    def x(t: int) -> float:
        return LABEL_PX + plot * min(max(t - start, 0), span) / span

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" '
        f'viewBox="0 0 {SVG_WIDTH} {height}" role="img">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#333"/></marker></defs>'
    ]
    for i, (label, bars) in enumerate(rows):
        y = i * ROW_PX
        out.append(
            f'<text x="4" y="{y + 15}" class="label">{escape(label)}</text>'
            f'<line x1="{LABEL_PX}" x2="{SVG_WIDTH - 10}" y1="{y + ROW_PX - 1}" '
            f'y2="{y + ROW_PX - 1}" class="grid"/>'
        )
        for bar in sorted(bars, key=lambda b: ("read", "write", "wait", "busy").index(b.kind)):
            if bar.t1 < start or bar.t0 > end:
                continue
            x0 = x(bar.t0)
            tip = f"<title>{escape(bar.tip)}</title>"
            if bar.kind == "busy":
                out.append(
                    f'<path class="busy" d="M{x0 - 5:.1f},{y + 3} L{x0 + 5:.1f},{y + 17} '
                    f'M{x0 + 5:.1f},{y + 3} L{x0 - 5:.1f},{y + 17}">{tip}</path>'
                )
                continue
            inset = {"read": 3, "write": 3, "wait": 7}[bar.kind]
            width = max(x(bar.t1) - x0, 1.5)
            out.append(
                f'<rect class="{bar.kind}" x="{x0:.1f}" y="{y + inset}" width="{width:.1f}" '
                f'height="{ROW_PX - 2 * inset}" rx="2">{tip}</rect>'
            )
    for waiter, holder, t in arrows:
        if waiter not in order or holder not in order:
            continue
        y0 = order.index(waiter) * ROW_PX + ROW_PX / 2
        y1 = order.index(holder) * ROW_PX + ROW_PX / 2
        xt = x(t)
        out.append(
            f'<line class="flow" x1="{xt:.1f}" y1="{y0:.1f}" x2="{xt:.1f}" '
            f'y2="{y1 + (4 if y1 < y0 else -4):.1f}" marker-end="url(#arrow)">'
            "<title>waits for</title></line>"
        )
    axis_y = ROW_PX * len(rows) + 14
    for k in range(6):
        t = start + span * k // 5
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        out.append(
            f'<text x="{x(t):.1f}" y="{axis_y}" class="axis" text-anchor="{anchor}">'
            f"+{(t - origin) / NS_PER_MS:,.1f} ms</text>"
        )
    out.append("</svg>")
    return "".join(out)


_LEGEND = (
    '<p class="legend"><span class="key write"></span>write lock held '
    '<span class="key read"></span>read lock held <span class="key wait"></span>waiting '
    '(busy handler) <span class="x">✕</span> failed: database is locked '
    "<span>│ arrow: waits for the holder</span></p>"
)

_CSS = f"""
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
  max-width: 1000px; padding: 0 1em; color: #1d1d1f; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
h3 {{ font-size: 1em; margin: 0 0 .3em; }} h4 {{ margin: .8em 0 .2em; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 2px 10px 2px 0; text-align: left;
  vertical-align: top; }}
table.groups {{ font-size: .9em; }}
table.groups td, table.groups th {{ border-bottom: 1px solid #ddd; padding: 3px 6px; }}
table.groups td:first-child {{ word-break: break-word; max-width: 14em; }}
table.groups tr.total td {{ font-weight: 600; }}
table.facts th {{ color: #666; font-weight: normal; }}
.finding {{ border: 1px solid #ccc; border-left: 6px solid #999; border-radius: 4px;
  padding: .8em 1em; margin: 1em 0; }}
.finding.error {{ border-left-color: {_COLOURS["busy"]}; }}
.finding.warning {{ border-left-color: {_COLOURS["wait"]}; }}
.finding.info {{ border-left-color: {_COLOURS["read"]}; }}
.sev {{ text-transform: uppercase; font-size: .8em; letter-spacing: .05em; }}
.meta {{ color: #666; margin: 0; }}
.evidence li {{ margin: .2em 0; white-space: pre-wrap; }}
.snippet {{ margin: .3em 0 .6em; }} .snippet span {{ color: #666; font-size: .85em; }}
pre {{ background: #f5f5f7; padding: .5em .8em; overflow-x: auto; margin: .2em 0; }}
.healthy {{ color: #1a7f37; }}
.timeline {{ overflow-x: auto; }}
svg .label {{ font: 12px ui-monospace, monospace; fill: #333; }}
svg .axis {{ font: 11px system-ui, sans-serif; fill: #666; }}
svg .grid {{ stroke: #eee; }}
svg rect.write {{ fill: {_COLOURS["write"]}; }} svg rect.read {{ fill: {_COLOURS["read"]};
  opacity: .6; }}
svg rect.wait {{ fill: {_COLOURS["wait"]}; }}
svg path.busy {{ stroke: {_COLOURS["busy"]}; stroke-width: 3; }}
svg line.flow {{ stroke: #333; stroke-width: 1.2; stroke-dasharray: 3 2; }}
.legend {{ color: #444; font-size: .9em; }}
.key {{ display: inline-block; width: 14px; height: 10px; margin: 0 4px 0 12px; }}
.key.write {{ background: {_COLOURS["write"]}; }} .key.read {{ background: {_COLOURS["read"]};
  opacity: .6; }}
.key.wait {{ background: {_COLOURS["wait"]}; }}
.x {{ color: {_COLOURS["busy"]}; font-weight: bold; margin-left: 12px; }}
footer {{ margin-top: 3em; color: #888; font-size: .85em; }}
"""
