"""checkpoint-starvation: overlapping readers keep checkpoints from reaching the end of the WAL.

A checkpoint copies back only frames no open reader still needs (wal.c walCheckpoint stops at
mxSafeFrame, the smallest read mark in use), and the WAL restarts from its beginning only after
a checkpoint has copied everything and no reader uses it (wal.c walRestartLog). With a reader
always open the WAL never restarts: it grows far past wal_autocheckpoint pages, and every read
must search a longer wal-index.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_lockprobe.diagnose import advice
from sqlite_lockprobe.diagnose.evidence import at, fmt_ms, hold_facts, hold_story, ms
from sqlite_lockprobe.diagnose.model import LockHold, Timeline, WalSample
from sqlite_lockprobe.diagnose.registry import pattern_of
from sqlite_lockprobe.findings import Finding

PATTERN = pattern_of(__name__)
# Autocheckpoint runs after a commit once the WAL holds wal_autocheckpoint frames (main.c,
# sqlite3WalDefaultHook), and a complete checkpoint lets the next writer restart the WAL. A
# healthy WAL so stays near that size plus one transaction; four times it means several
# checkpoint rounds in a row could not finish (a single transaction bigger than that, e.g. a
# bulk load, is ruled out by requiring readers to cover the growth).
GROWTH_FACTOR = 4
# Readers must cover this much of the growth window (from the first sample above one
# autocheckpoint's worth to the peak) for the growth to be their doing.
COVERAGE_HIGH = 0.9
COVERAGE_MEDIUM = 0.5
# A WAL frame is a 24-byte header plus one page; the file starts with a 32-byte header
# (wal.c, "WAL FILE FORMAT").
WAL_FRAME_HEADER = 24
WAL_HEADER = 32
READERS_SHOWN = 3


@dataclass(frozen=True)
class _Growth:
    """The WAL's growth past GROWTH_FACTOR autocheckpoints and the readers open meanwhile."""

    peak: WalSample
    peak_frames: int
    start: WalSample  # the last sample within one autocheckpoint's worth before the peak
    readers: list[LockHold]
    coverage: float  # the part of the growth window some read transaction was open

    @property
    def frames_left(self) -> int | None:
        """Frames not yet checkpointed at the peak, when the -shm header was read."""
        peak = self.peak
        if peak.mx_frame is None or peak.backfilled is None:
            return None
        return peak.mx_frame - peak.backfilled


def detect(timeline: Timeline) -> list[Finding]:
    """One finding when the WAL outgrew GROWTH_FACTOR autocheckpoints under constant readers."""
    growth = _growth(timeline)
    if growth is None or growth.coverage < COVERAGE_MEDIUM:
        return []
    return [_finding(timeline, growth)]


def _growth(timeline: Timeline) -> _Growth | None:
    """Matching: the peak of the WAL, if past the limit, and the readers of its growth."""
    if not timeline.is_wal or timeline.wal_autocheckpoint <= 0 or not timeline.wal_samples:
        return None
    frame = timeline.page_size + WAL_FRAME_HEADER
    base_frames = timeline.wal_autocheckpoint
    samples = timeline.wal_samples
    frames = [_frames(s, frame) for s in samples]
    peak_i = max(range(len(samples)), key=lambda i: (frames[i], -i))
    if frames[peak_i] <= GROWTH_FACTOR * base_frames or frames[peak_i] <= frames[0]:
        return None
    # The growth window opens at the last sample still within one autocheckpoint's worth.
    above = next(i for i in range(peak_i + 1) if frames[i] > base_frames)
    start = samples[max(0, above - 1)]
    window_ns = max(1, samples[peak_i].t - start.t)
    readers = timeline.read_holders_during(start.t, start.t + window_ns)
    coverage = _covered_ns(readers, start.t, start.t + window_ns) / window_ns
    return _Growth(samples[peak_i], frames[peak_i], start, readers, coverage)


def _evidence(timeline: Timeline, growth: _Growth, longest: list[LockHold]) -> list[str]:
    origin, peak, start = timeline.origin_ns, growth.peak, growth.start
    base_frames = timeline.wal_autocheckpoint
    limit_bytes = _limit_bytes(timeline)
    evidence = [
        f"the -wal file grew to {peak.wal_bytes} bytes ({growth.peak_frames} frames) at "
        f"{at(peak.t, origin)}: {growth.peak_frames / base_frames:.1f} x wal_autocheckpoint "
        f"({base_frames} pages of {timeline.page_size} bytes); reported past "
        f"{GROWTH_FACTOR} x ({limit_bytes} bytes)",
        f"read transactions were open {round(100 * growth.coverage)}% of the time from "
        f"{at(start.t, origin)} to {at(peak.t, origin)} ({fmt_ms(ms(peak.t - start.t))}), "
        f"{len({h.holder.conn for h in growth.readers})} reading connections",
    ]
    left = growth.frames_left
    if left is not None:
        evidence.append(
            f"at the peak {peak.backfilled} of {peak.mx_frame} frames were checkpointed: "
            f"{left} left un-checkpointed (from the -shm header)"
        )
    for hold in longest[:READERS_SHOWN]:
        evidence.append("reader: " + hold_story(hold, timeline, origin))
    return evidence


def _limit_bytes(timeline: Timeline) -> int:
    frame = timeline.page_size + WAL_FRAME_HEADER
    return GROWTH_FACTOR * timeline.wal_autocheckpoint * frame + WAL_HEADER


def _finding(timeline: Timeline, growth: _Growth) -> Finding:
    origin, peak, start = timeline.origin_ns, growth.peak, growth.start
    window_ns = max(1, peak.t - start.t)
    longest = sorted(
        growth.readers,
        key=lambda h: (-_overlap(h, start.t, start.t + window_ns), h.t0, h.holder.conn),
    )
    evidence = _evidence(timeline, growth, longest)
    left = growth.frames_left
    high = growth.coverage >= COVERAGE_HIGH and (left is None or left > 0)
    if not high:
        evidence.append(
            "readers left gaps, or the checkpoint had caught up at the peak: a checkpoint "
            "could have run in a gap, so the readers may be only part of the cause"
        )
    return Finding(
        pattern=PATTERN,
        title="The WAL keeps growing: readers starve the checkpoint",
        severity="warning",
        confidence="high" if high else "medium",
        explanation=(
            "In WAL mode a checkpoint copies pages back to the database only up to the "
            "oldest snapshot still in use by a reader, and the WAL file starts over only "
            "when a checkpoint has copied everything while no reader needs it. Here read "
            "transactions overlapped almost all the time, so checkpoints never reached the "
            "end: the -wal file grew far past wal_autocheckpoint, reads slow down as it "
            "grows, and the file stays that large on disk."
        ),
        evidence=tuple(evidence),
        advice=(advice.short_readers(),),
        facts={
            "wal_bytes_peak": peak.wal_bytes,
            "wal_frames_peak": growth.peak_frames,
            "wal_bytes_threshold": _limit_bytes(timeline),
            "growth_factor": round(growth.peak_frames / timeline.wal_autocheckpoint, 1),
            "wal_autocheckpoint": timeline.wal_autocheckpoint,
            "page_size": timeline.page_size,
            "mx_frame": peak.mx_frame,
            "backfilled": peak.backfilled,
            "frames_left": left,
            "reader_coverage": round(growth.coverage, 3),
            "readers": sorted({h.holder.conn for h in growth.readers}),
            "longest_reader": hold_facts(longest[0], origin) if longest else None,
        },
    )


def _frames(sample: WalSample, frame_bytes: int) -> int:
    """Frames in use: mx_frame from the -shm header when read, else what the file size holds."""
    if sample.mx_frame is not None:
        return sample.mx_frame
    return max(0, (sample.wal_bytes - WAL_HEADER) // frame_bytes)


def _overlap(hold: LockHold, t0: int, t1: int) -> int:
    return max(0, min(hold.t1, t1) - max(hold.t0, t0))


def _covered_ns(holds: list[LockHold], t0: int, t1: int) -> int:
    """Length of [t0, t1) covered by at least one hold (holds sorted by start)."""
    covered = 0
    reach = t0
    for hold in holds:
        lo = max(hold.t0, reach)
        hi = min(hold.t1, t1)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered
