#!/usr/bin/env python3
"""How much stepping the reference model costs, next to a real VM (about 8 ms per trace).

Prints events (model operations) per second for a few typical sequences, per profile, and the
cost of clone() + key() (what an interleaving explorer pays per visited state).

    python benchmarks/model_bench.py [--seconds 0.5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference import Machine  # noqa: E402
from reference import encodings as enc  # noqa: E402

INIT = enc.encode_msi(enc.DM_INIT, 0, 1)
SIPI = enc.encode_msi(enc.DM_STARTUP, 0x10, 1)


def init_sipi_trace(profile: str):
    """The host-driven trace of docs/host-findings.md#cost: VM + 2 vCPUs, LAPIC sync, INIT by MSI,
    observe, SIPI by MSI, observe. 9 events including VM creation."""

    def run():
        m = Machine(2, profile, "pvm")
        m.set_lapic(0)
        m.set_lapic(1)
        m.signal_msi(*INIT)
        m.get_mp_state(1)
        m.get_sregs(1)
        m.signal_msi(*SIPI)
        m.get_mp_state(1)
        m.get_regs(1)

    return run, 9


def init_sipi_ops(profile: str):
    """The same four INIT/SIPI operations on one machine, repeated (no VM creation)."""
    m = Machine(2, profile, "pvm")
    m.set_lapic(0)
    sipi_reset = m.profile.sender_writes_mp_state

    def run():
        m.signal_msi(*INIT)
        m.get_mp_state(1)
        m.signal_msi(*SIPI)
        if sipi_reset:  # 3.9 resets in KVM_RUN
            m.enter_run(1)
            m.kick_out(1)
        m.get_mp_state(1)

    return run, 4 + 2 * sipi_reset


def threaded_wakeup(profile: str):
    """An AP halted inside KVM_RUN woken by INIT then SIPI, with settle() after each
    operation, as sequential replay does. 7 events."""

    def run():
        m = Machine(2, profile, "pvm")
        m.set_lapic(0)
        m.signal_msi(*INIT)
        m.get_mp_state(1)
        m.signal_msi(*SIPI)
        m.get_mp_state(1)
        m.enter_run(1)
        m.guest_runs(1)
        m.guest_hlt(1)
        m.signal_msi(*INIT)
        m.settle()
        m.signal_msi(*SIPI)
        m.settle()

    return run, 11


def clone_key(profile: str):
    m = Machine(2, profile, "pvm")
    m.set_lapic(0)
    m.signal_msi(*INIT)

    def run():
        m.clone().key()

    return run, 1


def measure(fn, events: int, seconds: float) -> float:
    """Events per second of this process's CPU time (process_time), so that other load on
    the machine does not distort the figure."""
    n = 0
    batch = 50
    start = time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.process_time()
        if now >= deadline:
            return n * events / (now - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--profiles", default="linux-3.9,linux-3.10,mainline")
    args = ap.parse_args(argv)
    cases = [
        ("INIT/SIPI trace incl. VM creation", init_sipi_trace),
        ("INIT/GET/SIPI/GET on one VM", init_sipi_ops),
        ("halted AP woken, settle per op", threaded_wakeup),
        ("clone()+key()", clone_key),
    ]
    results = []
    for profile in args.profiles.split(","):
        for label, make in cases:
            fn, events = make(profile)
            rate = measure(fn, events, args.seconds)
            results.append({"profile": profile, "case": label, "events_per_s": round(rate)})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'profile':<12} {'case':<36} {'events/CPU-s':>12} {'us/event':>9}")
    for r in results:
        rate = r["events_per_s"]
        unit = "clones/s" if r["case"].startswith("clone") else ""
        print(f"{r['profile']:<12} {r['case']:<36} {rate:>12,} {1e6 / rate:>9.2f} {unit}")
    traces = [r for r in results if r["case"].startswith("INIT/SIPI trace")]
    trace = next((r for r in traces if r["profile"] == "mainline"), traces[0])
    per_trace_ms = 9 / trace["events_per_s"] * 1e3
    print(
        f"\nOne 9-event INIT/SIPI trace costs {per_trace_ms:.3f} ms in the model "
        f"({trace['profile']}), against about 8 ms (0.4 ms CPU) for the same trace on a real VM."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
