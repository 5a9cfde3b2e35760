"""Where a host-driven trace's CPU goes, next to C: user and system CPU per msi-init-sipi trace,
run back to back in one thread (no concurrency, so nothing waits on anything but the kernel).

Usage: python benchmarks/trace_cpu.py [N]

C: benchmarks/c/kvm_bench.c `trace` (the trace's ioctls and nothing else). Python: kvmtest's
replay of the same trace on KVM and the model (predictions cached, as in `kvmtest run --repeat`),
and the VM build alone (KvmSide: create, irqchip, memory, vCPUs, KVM_SET_CPUID2, APIC map sync;
then teardown), which says how much of the system CPU is kernel work C does not ask for. The
batch rows: the same with the kvm side as kvmtest.exec.batch.BatchSide (one C call a trace),
hooked in here whether or not run_trace chooses it by itself.
On 2 cores, 2 / (CPU per trace) bounds the traces per second any concurrency can reach.
"""

import contextlib
import os
import resource
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ioctl_roundtrip import build_c_baseline  # noqa: E402

from kvmtest import suite as runner  # noqa: E402
from kvmtest.trace.engine import run_trace  # noqa: E402


def cpu_ms(function, n: int) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
        function()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (
        (after.ru_utime - before.ru_utime) / n * 1e3,
        (after.ru_stime - before.ru_stime) / n * 1e3,
    )


def c_cpu_ms(binary: str, n: int) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([binary, "trace", str(n)], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        (after.ru_utime - before.ru_utime) / n * 1e3,
        (after.ru_stime - before.ru_stime) / n * 1e3,
    )


@contextlib.contextmanager
def batch_side():
    """run_trace with BatchSide for the traces it can replay (what the engine hook does)."""
    from kvmtest.exec import batch
    from kvmtest.exec import kvm as kvm_side

    python_side = kvm_side.KvmSide

    def side(kvm, trace, cpuid, cancel=None):
        chosen = batch.BatchSide if batch.batchable(trace) else python_side
        return chosen(kvm, trace, cpuid, cancel)

    kvm_side.KvmSide = side
    try:
        yield
    finally:
        kvm_side.KvmSide = python_side


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    backend = runner.choose_backend("kvm", True)
    context = backend.context
    traces, _ = runner.load_traces([])
    (trace,) = [t for t in traces if t.name == "msi-init-sipi"]
    from kvmtest.exec.batch import BatchSide
    from kvmtest.exec.kvm import KvmSide

    def build():
        side = KvmSide(context.kvm, trace, context.cpuid)
        side.close()

    def batch_alone():
        side = BatchSide(context.kvm, trace, context.cpuid)
        for step in trace.steps:
            side.perform(step)
        side.close()

    def batch_trace():
        with batch_side():
            run_trace(trace, "mainline", context)

    for _ in range(50):
        run_trace(trace, "mainline", context)  # warm: the predictions cache, the allocator
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_c_baseline(tmp)
        rows = [
            ("C (kvm_bench trace)", c_cpu_ms(binary, n)),
            (
                "kvmtest: the trace on KVM and the model",
                cpu_ms(lambda: run_trace(trace, "mainline", context), n),
            ),
            ("kvmtest: the VM build and teardown alone", cpu_ms(build, n)),
            ("kvmtest batch: the trace on KVM and the model", cpu_ms(batch_trace, n)),
            ("kvmtest batch: BatchSide alone (build, steps, teardown)", cpu_ms(batch_alone, n)),
        ]
    print(f"CPU per msi-init-sipi trace, {n} traces back to back in one thread\n")
    print("| what | user ms | system ms | total ms | ratio to C | bound on 2 cores |")
    print("|---|---|---|---|---|---|")
    c_total = sum(rows[0][1])
    for what, (user, system) in rows:
        total = user + system
        print(
            f"| {what} | {user:.3f} | {system:.3f} | {total:.3f} | {total / c_total:.2f}x "
            f"| {2000 / total:.0f}/s |"
        )


if __name__ == "__main__":
    main()
