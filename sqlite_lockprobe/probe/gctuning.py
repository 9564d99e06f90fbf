"""The cyclic garbage collector's young-generation threshold, raised while lockprobe makes
objects in bulk that live on (a workload's event tuples, a large log's spans)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect young objects less often until the block ends. At the default threshold (700)
    the collector was a tenth of a busy worker's time (benchmarks/bench_headroom.py), and it
    went over a large log's growing spans again and again (1 s of 8 for 1,000,000 events,
    benchmarks/bench_pipeline.py). Reference cycles are still collected, in bigger batches."""
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], 50_000), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
