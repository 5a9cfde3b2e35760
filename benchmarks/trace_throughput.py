"""Traces per second: msi-init-sipi against the same ioctls in C, and the whole corpus.

Usage: python benchmarks/trace_throughput.py [--repeat N] [--jobs J ...]
Prints, per backend: msi-init-sipi repeated N times with --jobs 1 (and its ratio to C), then
the whole built-in corpus with --jobs 1 and with each J, as traces per second and speed-up.
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
from kvmtest.trace.result import Status  # noqa: E402


def timed_run(traces, context, repeat, jobs) -> tuple[float, list]:
    start = time.perf_counter()
    results = runner.run_all(traces, "mainline", context, repeat=repeat, jobs=jobs)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if r.status in (Status.FAIL, Status.ERROR)]
    if bad:
        print(f"  warning: {len(bad)} traces did not pass: {bad[0].name}: {bad[0].message}")
    return elapsed, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--corpus-repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, nargs="*", default=[4, 8, 16, 32])
    args = parser.parse_args()

    traces, errors = runner.load_traces([])
    if errors:
        raise SystemExit(f"corpus does not load: {errors[0]}")
    reference_msi = [t for t in traces if t.name == "msi-init-sipi"]
    backends = [("reference", runner.choose_backend("reference", False).context)]
    kvm_backend = runner.choose_backend("auto", False)
    if kvm_backend.context.backend == "kvm":
        backends.append(("kvm", kvm_backend.context))

    c_ms = None
    if kvm_backend.context.backend == "kvm":
        with tempfile.TemporaryDirectory() as tmp:
            binary = build_c_baseline(tmp)
            out = subprocess.run(
                [binary, "trace", str(args.repeat)], capture_output=True, check=True
            )
            c_ms = float(out.stdout)
        print(f"C, same ioctls as msi-init-sipi: {c_ms:.3f} ms/trace ({1000 / c_ms:.0f} traces/s)")

    for name, context in backends:
        elapsed, _ = timed_run(reference_msi, context, args.repeat, 1)
        per = elapsed / args.repeat * 1000
        ratio = f", {per / c_ms:.2f}x C" if name == "kvm" and c_ms else ""
        print(
            f"[{name}] msi-init-sipi x{args.repeat}, --jobs 1: {per:.3f} ms/trace "
            f"({args.repeat / elapsed:.0f} traces/s{ratio})"
        )
        count = len(traces) * args.corpus_repeat
        timed_run(traces, context, 1, 8)  # warm-up: explorations of concurrent blocks are cached
        base, _ = timed_run(traces, context, args.corpus_repeat, 1)
        print(
            f"[{name}] corpus ({len(traces)} traces x{args.corpus_repeat}), --jobs 1: "
            f"{count / base:.0f} traces/s"
        )
        for jobs in args.jobs:
            elapsed, _ = timed_run(traces, context, args.corpus_repeat, jobs)
            print(
                f"[{name}] corpus, --jobs {jobs}: {count / elapsed:.0f} traces/s "
                f"({base / elapsed:.2f}x --jobs 1)"
            )


if __name__ == "__main__":
    main()
