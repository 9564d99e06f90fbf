"""The worst moment of a run as a compact character timeline for the terminal (rich).

`worst_window` takes the window around the worst busy wait (report/window.py) and turns
each connection involved into one row of cells; `window_renderable` draws it within the
console's width (78 columns at least, wider labels when there is room). The same plain
`Window` can feed any other text renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from sqlite_lockprobe.diagnose.model import BusyWait, Timeline
from sqlite_lockprobe.report.fitting import ellipsize_middle
from sqlite_lockprobe.report.window import choose_window

BAR_WIDTH = 50
LABEL_WIDTH = 20
ROLE_WIDTH = 6
# On a console narrower than 78 columns: the least a label and a bar are given.
MIN_LABEL_WIDTH = 10
MIN_BAR_WIDTH = 10
# Cell states, weakest first: a cell shows the strongest state in its time slice.
IDLE, READ, WRITE, WAIT, BUSY = " ", "r", "W", "~", "X"
_STRENGTH = {IDLE: 0, READ: 1, WRITE: 2, WAIT: 3, BUSY: 4}
_DRAW = {
    IDLE: ("·", "dim"),
    READ: ("▒", "blue"),
    WRITE: ("█", "magenta"),
    WAIT: ("░", "yellow"),
    BUSY: ("✗", "bold red"),
}
LEGEND = (
    (WRITE, "write lock"),
    (READ, "read lock"),
    (WAIT, "waiting"),
    (BUSY, "SQLITE_BUSY: database is locked"),
)


@dataclass(frozen=True)
class WindowRow:
    """One connection in the window: `cells` has one state character per time slice."""

    worker: str
    conn: str
    role: str  # "waiter" | "holder" | "waited" (another waiter in the window)
    cells: str


@dataclass(frozen=True)
class Window:
    """The worst wait's surroundings: times in ms since the run's first recorded moment."""

    title: str
    start_ms: float
    end_ms: float
    rows: tuple[WindowRow, ...]


def worst_window(timeline: Timeline, width: int = BAR_WIDTH) -> Window | None:
    """The window around the worst wait as rows of cells, or None when nothing waited."""
    chosen = choose_window(timeline)
    if chosen is None:
        return None
    rows = tuple(
        WindowRow(
            chosen.workers.get(conn, conn),
            conn,
            role,
            _cells(timeline, conn, chosen.start_ns, chosen.end_ns, width),
        )
        for conn, role in chosen.roles.items()
    )
    return Window(chosen.title, chosen.start_ms, chosen.end_ms, rows)


def _cells(timeline: Timeline, conn: str, start: int, end: int, width: int) -> str:
    step = (end - start) / width
    cells = [IDLE] * width

    def mark(t0: int, t1: int, state: str) -> None:
        if t1 < start or t0 > end:
            return
        first = max(0, int((t0 - start) / step))
        last = min(width - 1, max(first, int((t1 - start) / step - 1e-9)))
        for i in range(first, last + 1):
            if _STRENGTH[state] > _STRENGTH[cells[i]]:
                cells[i] = state

    for h in timeline.read_holders_during(start, end):
        if h.holder.conn == conn:
            mark(h.t0, h.t1, READ)
    for h in timeline.write_holders_during(start, end):
        if h.holder.conn == conn:
            mark(h.t0, h.t1, WRITE)
    mine: list[BusyWait] = [w for w in timeline.waits if w.waiter.conn == conn]
    for w in mine:
        mark(w.t0, w.t1, WAIT)
    for w in mine:
        if w.failed:
            mark(w.t1, w.t1, BUSY)
    return "".join(cells)


def window_renderable(window: Window) -> WindowView:
    """The rows, a time axis and the legend, sized to the console (WindowView)."""
    return WindowView(window)


class WindowView:
    """The window drawn within the console's width: a label column as wide as the longest
    worker name allows (at least LABEL_WIDTH; 78 columns in all with the defaults), labels
    shortened in the middle so that `#0` and the end of a name, which tell workers apart,
    stay; below 78 columns the bar is redrawn narrower."""

    def __init__(self, window: Window) -> None:
        self.window = window

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        window = self.window
        cells = len(window.rows[0].cells) if window.rows else BAR_WIDTH
        longest = max([0] + [len(row.worker) for row in window.rows])
        gutter = ROLE_WIDTH + 2
        room = options.max_width - gutter
        label_width = max(LABEL_WIDTH, min(longest, room - cells))
        if label_width + cells > room:  # a console narrower than 78 columns
            label_width = max(MIN_LABEL_WIDTH, min(LABEL_WIDTH, room - MIN_BAR_WIDTH))
            cells = max(MIN_BAR_WIDTH, min(cells, room - label_width))
        yield Text(window.title, style="bold")
        for row in window.rows:
            line = Text()
            style = "" if row.role == "waited" else "bold"
            label = ellipsize_middle(row.worker, label_width)
            line.append(f"{label:<{label_width}} ", style=style)
            line.append(f"{row.role:<{ROLE_WIDTH}} ", style="dim")
            for cell in resample(row.cells, cells):
                char, cell_style = _DRAW[cell]
                line.append(char, style=cell_style)
            yield line
        left, right = f"+{window.start_ms:,.1f} ms", f"+{window.end_ms:,.1f} ms"
        indent = " " * (label_width + gutter)
        yield Text(f"{indent}{left}{right:>{max(1, cells - len(left))}}", style="dim")
        legend = Text()
        for state, meaning in LEGEND:
            char, style = _DRAW[state]
            legend.append(char, style=style)
            legend.append(f" {meaning}  " if state != BUSY else f" {meaning}")
        yield legend


def resample(cells: str, width: int) -> str:
    """`cells` redrawn `width` wide: each new cell shows the strongest state of the cells it
    covers, so a failure or a wait never disappears from a narrower bar."""
    if width >= len(cells):
        return cells
    out = []
    for i in range(width):
        first = i * len(cells) // width
        last = max(first + 1, (i + 1) * len(cells) // width)
        out.append(max(cells[first:last], key=_STRENGTH.__getitem__))
    return "".join(out)
