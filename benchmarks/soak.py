"""Soak: run the corpus on this host's KVM again and again (>= 10,000 traces) and print open
fds, threads and RSS as it goes. Flat lines are the point: a run of any length must leave no
VM, fd or thread behind and keep its memory.

    .venv/bin/python benchmarks/soak.py [--traces 10000] [--jobs 8]

Results are kept as kvmtest run keeps them (every result until the end), so RSS growth here is
what a long `kvmtest run --repeat` costs.
"""

import argparse
import os
import threading
import time

from kvmtest.suite import choose_backend, load_traces, run_all


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    traces, _ = load_traces([])
    context = choose_backend("kvm", require_kvm=True).context
    kept, done, bad = [], 0, 0
    run_all(traces, "mainline", context, jobs=args.jobs)  # warm up: imports, caches, pools
    start_fds, start_threads, start_rss = fds(), threading.active_count(), rss_mib()
    print(f"{'traces':>7} {'fds':>5} {'threads':>7} {'RSS MiB':>8} {'traces/s':>9}")
    print(f"{0:>7} {start_fds:>5} {start_threads:>7} {start_rss:>8.1f}")
    began = time.perf_counter()
    while done < args.traces:
        batch = run_all(traces, "mainline", context, jobs=args.jobs)
        kept += batch
        done += len(batch)
        for result in batch:
            if result.status.name in ("FAIL", "ERROR"):
                bad += 1
                shown = "; ".join(m.describe() for m in result.mismatches[:3])
                print(f"  {result.status.name} {result.name}: {result.message} {shown}")
        if done // 1000 != (done - len(batch)) // 1000 or done >= args.traces:
            rate = done / (time.perf_counter() - began)
            print(
                f"{done:>7} {fds():>5} {threading.active_count():>7} {rss_mib():>8.1f} {rate:>9.0f}"
            )
    print(
        f"after {done} traces ({bad} failed or errors): fds {start_fds} -> {fds()}, "
        f"threads {start_threads} -> {threading.active_count()}, "
        f"RSS {start_rss:.1f} -> {rss_mib():.1f} MiB (+{rss_mib() - start_rss:.1f})"
    )
    context.kvm.close()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
