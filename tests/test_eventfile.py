"""The per-process event file: every appended event is written once, in order, whatever
other threads append while the flusher takes its batch."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from sqlite_lockprobe.events.eventfile import EventFile, read_event_file


def test_events_appended_during_flushes_are_each_written_once_in_order(tmp_path: Path) -> None:
    recording = EventFile(tmp_path / "events.lpk")
    writers, per_writer = 4, 20_000
    start = threading.Barrier(writers + 1)
    first_batch_written = threading.Event()
    done = threading.Event()

    def append(writer: int) -> None:
        start.wait()
        for i in range(per_writer):
            recording.append(("close", i, f"w{writer}"))
            if i == per_writer // 2:
                first_batch_written.wait()  # so at least two batches are taken mid-stream

    def flush_until_done() -> None:
        start.wait()
        while not done.is_set():
            recording.flush()  # races the appends
            if recording.written:
                first_batch_written.set()

    threads = [threading.Thread(target=append, args=(w,)) for w in range(writers)]
    flusher = threading.Thread(target=flush_until_done)
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between nearly every two bytecodes
    try:
        for t in [*threads, flusher]:
            t.start()
        for t in threads:
            t.join()
        done.set()
        flusher.join()
    finally:
        sys.setswitchinterval(switching)
    recording.close()

    seen: dict[str, list[int]] = {}
    for event in read_event_file(recording.path):
        seen.setdefault(event["conn"], []).append(event["t"])
    assert seen == {f"w{w}": list(range(per_writer)) for w in range(writers)}
    assert recording.recorded == writers * per_writer
    assert _chunks(Path(recording.path)) > 1


def _chunks(path: Path) -> int:
    data, offset, count = path.read_bytes(), 0, 0
    while offset < len(data):
        offset += 8 + int.from_bytes(data[offset : offset + 8], "little")
        count += 1
    return count


def test_a_closed_file_is_never_written_again(tmp_path: Path) -> None:
    recording = EventFile(tmp_path / "events.lpk")
    recording.append(("close", 1, "c1"))
    recording.close()
    recording.append(("close", 2, "c1"))
    recording.flush()  # its descriptor number may belong to another file by now
    assert [e["t"] for e in read_event_file(recording.path)] == [1]
