"""Load generator headroom: lockprobe's engine (one thread worker, with and without the
probe) against a minimal hand-written Python loop doing the same statements on the same kind
of database, interleaved in one process.

    python benchmarks/bench_headroom.py [--commits 20000] [--rounds 5]

Issue 7 target: the engine's commit rate >= 0.9 of the hand-written loop.
"""

from __future__ import annotations

import argparse
import statistics

from bench_probe_overhead import WORKLOAD, hand_written, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commits", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    args = parser.parse_args()
    assert "BEGIN" in WORKLOAD.upper()
    runs: dict[str, list[tuple[float, float]]] = {"hand": [], "bare": [], "probed": []}
    hand_written(1000)
    for _ in range(args.rounds):
        runs["hand"].append(hand_written(args.commits, args.synchronous))
        runs["bare"].append(measure(args.commits, False, 1, args.synchronous))
        runs["probed"].append(measure(args.commits, True, 1, args.synchronous))
    hand = runs["hand"]
    print(
        f"{'hand-written loop':18} median {statistics.median(r for r, _ in hand):8,.0f} "
        f"commits/s, {statistics.median(c for _, c in hand):.1f} us CPU per commit"
    )
    for name, key in (("engine, no probe", "bare"), ("engine, probed", "probed")):
        # Each round against the hand-written loop run just before it: load on a shared
        # machine drifts between rounds, much less within one.
        rates = [r / h[0] for (r, _), h in zip(runs[key], hand, strict=True)]
        cpus = [h[1] / c for (_, c), h in zip(runs[key], hand, strict=True)]
        print(
            f"{name:18} median {statistics.median(r for r, _ in runs[key]):8,.0f} commits/s; "
            f"ratio to hand-written: throughput {statistics.median(rates):.3f} "
            f"(rounds {', '.join(f'{r:.2f}' for r in rates)}), by CPU per commit "
            f"{statistics.median(cpus):.3f} (rounds {', '.join(f'{r:.2f}' for r in cpus)})"
        )
    print("target: engine >= 0.9 of the hand-written loop")


if __name__ == "__main__":
    main()
