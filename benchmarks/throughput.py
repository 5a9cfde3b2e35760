"""Traces per second side by side with C, in one run: host-driven traces, the whole corpus,
the fuzzer; and single-trace latency. Run it on a quiet machine:

    nice -n 10 python benchmarks/throughput.py [--jobs 1 16 64] [--repeat 600]

C: benchmarks/c/kvm_bench.c `trace` (the ioctls of msi-init-sipi), J processes at once for
concurrency J. Python: `kvmtest run --jobs J` (kvmtest.suite.run_all: forked processes, one per
core, with J / processes threads each), and `kvmtest fuzz --jobs J` (coverage sampling on).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ioctl_roundtrip import build_c_baseline  # noqa: E402

from kvmtest import suite as runner  # noqa: E402
from kvmtest.fuzz.run import fuzz  # noqa: E402


def c_rate(binary: str, processes: int, per_process: int) -> float:
    start = time.perf_counter()
    procs = [
        subprocess.Popen([binary, "trace", str(per_process)], stdout=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    for p in procs:
        p.wait()
    return processes * per_process / (time.perf_counter() - start)


def py_rate(traces, context, repeat: int, jobs: int) -> float:
    start = time.perf_counter()
    results = runner.run_all(traces, "mainline", context, repeat=repeat, jobs=jobs)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if r.status.name in ("FAIL", "ERROR")]
    if bad:
        print(f"  ({len(bad)} of {len(results)} did not pass: {bad[0].name})")
    return len(results) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--repeat", type=int, default=600)
    parser.add_argument("--fuzz-budget", type=int, default=1500)
    args = parser.parse_args()
    context = runner.choose_backend("kvm", True).context
    traces, _ = runner.load_traces([])
    msi = [t for t in traces if t.name == "msi-init-sipi"]
    runner.run_all(traces, "mainline", context, jobs=8)  # warm the exploration cache
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_c_baseline(tmp)
        print(
            "| concurrency | C traces/s | msi-init-sipi traces/s | ratio to C | corpus traces/s "
            "| fuzz traces/s |"
        )
        print("|---|---|---|---|---|---|")
        for jobs in args.jobs:
            c = c_rate(binary, jobs, max(20, args.repeat // jobs))
            host = py_rate(msi, context, args.repeat, jobs)
            corpus = py_rate(traces, context, max(1, args.repeat // len(traces)), jobs)
            rep = fuzz(
                1,
                "mainline",
                context,
                budget=args.fuzz_budget // (4 if jobs == 1 else 1),
                jobs=jobs,
                max_shrunk=0,
            )
            print(
                f"| {jobs} | {c:.0f} | {host:.0f} | {host / c:.2f}x | {corpus:.0f} "
                f"| {rep.rate:.0f} |",
                flush=True,
            )
        c1 = 1000 / c_rate(binary, 1, 300)
        start = time.perf_counter()
        runner.run_all(msi, "mainline", context, repeat=300, jobs=1)
        py1 = (time.perf_counter() - start) / 300 * 1000
        print(
            f"\nsingle-trace latency (msi-init-sipi, --jobs 1): Python {py1:.2f} ms, "
            f"C {c1:.2f} ms ({py1 / c1:.2f}x C)"
        )


if __name__ == "__main__":
    main()
