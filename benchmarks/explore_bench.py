"""The interleaving explorer's speed: time to exhaust each concurrent trace of the corpus.

Usage: python benchmarks/explore_bench.py [--profile P ...]
Prints, per trace and profile: states, interleavings (schedules), milliseconds, and
interleavings per second (schedules covered per second of search).
"""

import argparse
import time

from kvmtest import ops as f
from kvmtest import suite as runner
from kvmtest.sim.explore import Explorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", nargs="*", default=["linux-3.9", "linux-3.10", "mainline"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    traces, _ = runner.load_traces([])
    racy = [t for t in traces if any(isinstance(s, f.Concurrently) for s in t.steps)]
    print(f"{'trace':<34}{'profile':<12}{'states':>8}{'schedules':>12}{'ms':>9}{'schedules/s':>14}")
    for trace in racy:
        for profile in args.profile:
            best = None
            for _ in range(args.rounds):
                start = time.perf_counter()
                result = Explorer(trace, profile).run()
                elapsed = time.perf_counter() - start
                best = elapsed if best is None else min(best, elapsed)
            rate = (result.interleavings or 0) / best
            print(
                f"{trace.name:<34}{profile:<12}{result.states:>8}{result.interleavings:>12}"
                f"{best * 1000:>9.1f}{rate:>14.0f}" + ("  violation" if result.violations else "")
            )


if __name__ == "__main__":
    main()
