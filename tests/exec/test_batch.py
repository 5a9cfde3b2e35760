"""The batch path (kvmtest.exec.batch) is KvmSide issued from C: for every corpus trace it
accepts, both sides show the same values step by step on /dev/kvm, issue the same syscalls
(strace), and judge alike against the model; a failing checked ioctl errs alike; what it does
not plan stays with KvmSide. Real KVM throughout, no mock."""

import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from kvmtest import ops as f
from kvmtest import suite as runner
from kvmtest.exec import batch
from kvmtest.exec import kvm as kvm_side
from kvmtest.trace import engine
from kvmtest.trace.load import parse_trace
from tests.conftest import require_kvm

CORPUS, _ = runner.load_traces([])
BATCHABLE = [t for t in CORPUS if batch.batchable(t)]
KVM_SIDE = kvm_side.KvmSide


@pytest.fixture(scope="module")
def host():
    require_kvm()
    return runner.choose_backend("kvm", True).context


def _replay(side_class, host, trace) -> list:
    """What each step showed, perform() + settle(), as the engine collects it."""
    side = side_class(host.kvm, trace, host.cpuid)
    shown = []
    try:
        for step in trace.steps:
            observed = side.perform(step)
            observed.update(side.settle())
            shown.append(observed)
    finally:
        side.close()
    return shown


def _hooked_side(kvm, trace, cpuid, cancel=None):
    """The engine hook: BatchSide for what it accepts, KvmSide for the rest."""
    chosen = batch.BatchSide if batch.plan_of(trace) is not None else KVM_SIDE
    return chosen(kvm, trace, cpuid, cancel)


@pytest.fixture
def python_engine(monkeypatch):
    """run_trace on KvmSide alone, whether or not engine.py chooses BatchSide by itself."""
    monkeypatch.setattr(batch, "batchable", lambda trace: False)
    monkeypatch.setattr(kvm_side, "KvmSide", KVM_SIDE)


@pytest.fixture
def batch_engine(monkeypatch):
    """run_trace with the hook applied (engine.py imports KvmSide from here per run)."""
    monkeypatch.setattr(kvm_side, "KvmSide", _hooked_side)


def test_the_corpus_is_mostly_batchable():
    host_driven = [t for t in CORPUS if t.setup.guest == "none"]
    assert len(BATCHABLE) >= 50
    rest = {t.name for t in host_driven} - {t.name for t in BATCHABLE}
    assert all(
        any(s.kind in ("snapshot", "restore", "guest_ran", "concurrently") for s in t.steps)
        for t in host_driven
        if t.name in rest
    ), rest


@pytest.mark.parametrize("trace", BATCHABLE, ids=lambda t: t.name)
def test_each_step_shows_what_kvm_side_shows(host, trace):
    assert _replay(batch.BatchSide, host, trace) == _replay(KVM_SIDE, host, trace)


@pytest.mark.parametrize("trace", BATCHABLE, ids=lambda t: t.name)
def test_judged_alike_by_the_engine(host, trace, request, monkeypatch):
    request.getfixturevalue("python_engine")
    python = engine.run_trace(trace, "mainline", host)
    monkeypatch.undo()
    request.getfixturevalue("batch_engine")
    batched = engine.run_trace(trace, "mainline", host)
    assert python.status.name in ("PASS", "SKIP"), python.message
    assert (batched.status, batched.message, batched.mismatches, batched.compared) == (
        python.status,
        python.message,
        python.mismatches,
        python.compared,
    )


STRACE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from kvmtest import suite as runner
    from kvmtest.exec import batch
    from kvmtest.exec.kvm import KvmSide
    host = runner.choose_backend("kvm", True).context
    side_class = batch.BatchSide if sys.argv[1] == "batch" else KvmSide
    traces, _ = runner.load_traces([])
    for trace in traces:
        if batch.batchable(trace):
            side = side_class(host.kvm, trace, host.cpuid)
            for step in trace.steps:
                side.perform(step)
            side.close()
            del side  # KvmSide's memory is unmapped when the object goes, as in run_trace
            try:
                os.close(-1)  # a marker in the strace log
            except OSError:
                pass
    """
)


def _syscalls(tmp_path, mode: str) -> list[str]:
    script, log = tmp_path / "replay.py", tmp_path / f"{mode}.strace"
    script.write_text(STRACE_SCRIPT)
    command = ["strace", "-qq", "-e", "trace=ioctl,close,mmap,munmap", "-o", str(log)]
    subprocess.run([*command, sys.executable, str(script), mode], check=True, cwd=os.getcwd())
    lines = log.read_text().splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if "KVM_CREATE_VM" in line) :]
    # The slot's memory: an mmap whose address the next ioctl gives KVM_SET_USER_MEMORY_REGION,
    # and the munmap of a slot's address (the allocator maps and unmaps 1 MiB arenas too).
    ioctls = [i for i, line in enumerate(lines) if line.startswith("ioctl(")]
    kept, slots = [], set()
    for i, line in enumerate(lines):
        if line.startswith("mmap("):
            after = next((lines[j] for j in ioctls if j > i), "")
            keep = f"userspace_addr={line.rsplit('= ', 1)[1]}" in after
        elif line.startswith("munmap("):
            address = line[len("munmap(") :].split(",")[0]
            keep = address in slots
            slots.discard(address)
        else:
            slots.update(re.findall(r"userspace_addr=(0x[0-9a-f]+)", line))
            keep = line.startswith(("ioctl(", "close("))
        if keep:
            kept.append(re.sub(r"0x[0-9a-f]{6,}", "ADDR", line))
    return kept


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_same_syscalls_in_the_same_order(host, tmp_path):
    """Every ioctl (strace decodes the KVM structs it knows), close and slot mmap/munmap of
    every batchable corpus trace, in order, on both paths."""
    python, batched = _syscalls(tmp_path, "kvm"), _syscalls(tmp_path, "batch")
    assert sum("KVM_SIGNAL_MSI" in line for line in python) > 50
    assert batched == python


def _free_fds(count: int) -> int:
    """A soft RLIMIT_NOFILE under which exactly `count` more fds can be opened."""
    probes = [os.dup(0) for _ in range(count + 1)]  # the lowest free numbers, in order
    for fd in probes:
        os.close(fd)
    return probes[-1]


def test_a_checked_ioctl_failing_midway_errs_alike(host):
    """KVM_CREATE_VCPU of the second vCPU fails (EMFILE: the VM fd and vCPU 0 took the last
    two fds): the same ERROR on both paths, and both tear down what they built."""
    trace = parse_trace("name: emfile\nsetup: {vcpus: 2}\nsteps:\n  - get_mp_state: 1\n")
    assert batch.batchable(trace)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    results = []
    for side_class in (KVM_SIDE, batch.BatchSide):
        before = sorted(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (_free_fds(2), hard))
        try:
            with pytest.raises(OSError) as raised:
                side_class(host.kvm, trace, host.cpuid)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        results.append((type(raised.value), str(raised.value)))
        assert sorted(os.listdir("/proc/self/fd")) == before  # nothing leaked
    assert results[0] == results[1]
    assert results[0][1] == "KVM_CREATE_VCPU failed: EMFILE (Too many open files)"


def test_the_engine_reports_the_failure_at_the_same_step(host, monkeypatch):
    trace = parse_trace("name: emfile\nsetup: {vcpus: 2}\nsteps:\n  - get_mp_state: 1\n")
    engine.run_trace(trace, "mainline", host)  # imports and predictions, with fds to spare
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    messages = []
    for side, batchable in ((KVM_SIDE, lambda t: False), (_hooked_side, batch.batchable)):
        monkeypatch.setattr(kvm_side, "KvmSide", side)
        monkeypatch.setattr(batch, "batchable", batchable)
        resource.setrlimit(resource.RLIMIT_NOFILE, (_free_fds(2), hard))
        try:
            result = engine.run_trace(trace, "mainline", host)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        messages.append((result.status.name, result.message))
    assert messages[0] == messages[1]
    assert messages[0] == (
        "ERROR",
        "<string>: step 1: kvm: KVM_CREATE_VCPU failed: EMFILE (Too many open files)",
    )


@pytest.mark.parametrize(
    "trace",
    [
        parse_trace("name: s\nsetup: {vcpus: 2}\nsteps:\n  - snapshot: {}\n"),
        parse_trace("name: g\nsetup: {vcpus: 2}\nsteps:\n  - guest_ran: 1\n"),
        parse_trace("name: r\nsetup: {vcpus: 2}\nsteps:\n  - snapshot: {}\n  - restore: {}\n"),
        parse_trace("name: st\nsetup: {vcpus: 2, guest: stepper}\nsteps:\n  - start: 0\n"),
        f.Trace("code", f.Setup(), (f.SetRegs(0, (("rip", 1 << 64),)),)),  # OverflowError there
        f.Trace("code", f.Setup(), (f.GetMpState(2),)),  # no vCPU 2: an IndexError there
        f.Trace("code", f.Setup(), (f.SetMsrs(0, (("apic_base", 0), ("apic_base", 0))),)),
    ],
    ids=["snapshot", "guest_ran", "restore", "stepper", "overflow", "no-vcpu", "two-msrs"],
)
def test_what_is_not_planned_stays_with_kvm_side(trace):
    assert not batch.batchable(trace)


def test_concurrent_blocks_stay_with_kvm_side():
    blocks = [t for t in CORPUS if any(s.kind == "concurrently" for s in t.steps)]
    assert blocks and not any(batch.batchable(t) for t in blocks)


def test_runs_on_threads_share_no_buffer(host):
    """Concurrent runs of the same traces (one plan each) see what one run alone sees."""
    traces = BATCHABLE[:8]
    expected = {t.name: _replay(KVM_SIDE, host, t) for t in traces}
    plans = {t.name: (batch.plan_of(t).op_bytes, batch.plan_of(t).buffer_bytes) for t in traces}
    failures = []

    def work():
        for _ in range(5):
            for trace in traces:
                if _replay(batch.BatchSide, host, trace) != expected[trace.name]:
                    failures.append(trace.name)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert plans == {
        t.name: (batch.plan_of(t).op_bytes, batch.plan_of(t).buffer_bytes) for t in traces
    }  # the templates are copied, never written


def test_the_batch_is_one_compiled_cffi_call():
    """API-mode cffi (the compiled module), which releases the GIL around the call."""
    from kvmtest.kvm import _kvm_cffi

    assert batch.lib is _kvm_cffi.lib
    assert "kvmtest_ioctl_batch" in dir(_kvm_cffi.lib)
