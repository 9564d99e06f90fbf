from sqlite_lockprobe.diagnose import checkpoint_starvation

from .builders import TimelineBuilder

FRAME = 4096 + 24


def growing_wal(peak_frames: int, readers: str = "overlapping", journal_mode: str = "wal"):
    """A WAL sampled every second while it grows to peak_frames (autocheckpoint 1000)."""
    tl = TimelineBuilder(journal_mode=journal_mode)
    r1 = tl.conn("r1")
    r2 = tl.conn("r2")
    if readers == "overlapping":
        tl.read_hold(r1, 0, 6000, taken_by="SELECT * FROM big")
        tl.read_hold(r2, 5000, 11000, taken_by="SELECT * FROM big")
    elif readers == "gappy":
        tl.read_hold(r1, 1000, 2000)
    for i in range(11):
        n = peak_frames * i // 10
        tl.wal_sample(i * 1000, 32 + n * FRAME, mx_frame=n, backfilled=min(n, 900))
    return tl


def test_wal_growing_past_four_autocheckpoints_under_readers_is_checkpoint_starvation():
    findings = checkpoint_starvation.detect(growing_wal(10_000).build())
    assert len(findings) == 1
    f = findings[0]
    assert f.pattern == "checkpoint-starvation"
    assert f.severity == "warning" and f.confidence == "high"
    assert f.facts["wal_frames_peak"] == 10_000
    assert f.facts["frames_left"] == 9_100
    assert f.facts["growth_factor"] == 10.0
    assert f.facts["readers"] == ["r1", "r2"]
    assert any("9100 left un-checkpointed" in e for e in f.evidence)


def test_wal_growth_below_threshold_is_healthy():
    assert checkpoint_starvation.detect(growing_wal(4_000).build()) == []


def test_wal_growth_just_above_threshold_is_reported():
    assert checkpoint_starvation.detect(growing_wal(4_010).build())


def test_wal_growth_without_readers_is_not_starvation():
    assert checkpoint_starvation.detect(growing_wal(10_000, readers="none").build()) == []


def test_wal_growth_with_rare_readers_is_not_starvation():
    assert checkpoint_starvation.detect(growing_wal(10_000, readers="gappy").build()) == []


def test_file_size_is_used_when_shm_was_not_read():
    tl = TimelineBuilder(journal_mode="wal")
    r = tl.conn("r")
    tl.read_hold(r, 0, 10_000)
    tl.wal_sample(0, 32)
    tl.wal_sample(10_000, 32 + 5000 * FRAME)
    f = checkpoint_starvation.detect(tl.build())[0]
    assert f.facts["wal_frames_peak"] == 5000
    assert f.facts["frames_left"] is None


def test_rollback_mode_has_no_checkpoint_starvation():
    tl = growing_wal(10_000, journal_mode="delete")
    assert checkpoint_starvation.detect(tl.build()) == []
