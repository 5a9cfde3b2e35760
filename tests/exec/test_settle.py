"""Settling by observation ends as soon as nothing can report, never later than the bound:
a vCPU thread spinning inside KVM_RUN without entering the guest (an NMI in wait-for-SIPI,
docs/semantics.md#rule-18) is told from one running guest code by KVM's exit counter, and a
concurrent block's branch stops waiting for a report once no branch can act and every busy
vCPU thread sleeps or spins. Real KVM throughout."""

import threading
import time

from kvmtest import guest as g
from kvmtest.exec import kvm as kvm_exec
from kvmtest.trace.load import parse_trace

SPIN_TRACE = """
name: spin
setup: {vcpus: 2, guest: stepper}
steps:
  - start: 0
  - start: 1
"""


def _side(kvm, text=SPIN_TRACE):
    trace = parse_trace(text)
    side = kvm_exec.KvmSide(kvm, trace, kvm.get_supported_cpuid())
    for step in trace.steps:
        side.perform(step)
    side.settle()
    return side


def _eventually(predicate, seconds=10.0) -> bool:
    """Liveness, not speed: True as soon as the predicate holds (polled), False at the end."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_the_exit_counter_moves_when_the_guest_runs(kvm):
    side = _side(kvm)
    try:
        stats = side.vcpus[0].stats()
        assert stats is not None, "KVM_GET_STATS_FD: Linux 5.14+ has it"
        assert stats.read("exits") >= 1  # the BSP's ready report is an I/O exit
        assert side.vcpus[1].stats().read("exits") == 0  # the AP never entered the guest
    finally:
        side.close()


def test_an_nmi_in_init_received_spins_and_is_seen_to(kvm):
    side = _side(kvm)
    try:
        side.vm.signal_msi(0xFEE01000, 0, 0x500)  # INIT to the AP
        ap = side.workers[1]
        assert _eventually(ap.asleep)  # INIT_RECEIVED: asleep in kvm_vcpu_block
        assert not ap.spinning()
        side.vm.signal_msi(0xFEE01000, 0, 0x400)  # NMI: its thread never sleeps again
        assert _eventually(ap.spinning)
        assert not ap.asleep()
        observed = side.settle(timeout=3600)  # returns by observation, not by the bound
        assert observed[(1, "thread")] == "running"
    finally:
        side.close()


def test_an_nmi_in_uninitialized_spins_and_is_seen_to(kvm):
    side = _side(kvm)
    try:
        side.vm.signal_msi(0xFEE01000, 0, 0x400)  # NMI to an AP in UNINITIALIZED: -EAGAIN loop
        assert _eventually(side.workers[1].spinning)
    finally:
        side.close()


def test_guest_code_that_runs_on_is_never_taken_for_spinning(kvm):
    side = _side(kvm)
    try:
        bsp = side.workers[0]
        bsp.submit(g.CMD_SPIN, 0xFFFFFFFF)  # minutes of guest code
        looks = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert bsp.busy and not bsp.spinning() and not bsp.asleep()
            looks += 1
            time.sleep(0.002)
        assert looks > 50
    finally:
        side.close()


def test_a_branch_stops_waiting_once_nothing_can_report(kvm, monkeypatch):
    """A halted vCPU, no other branch: its report cannot come, so the wait ends by
    observation even with an hour's bound."""
    monkeypatch.setattr(kvm_exec, "REPORT_TIMEOUT", 3600.0)
    side = _side(kvm)
    try:
        side.workers[0].submit(g.CMD_HLT)
        branches = kvm_exec._Branches(1)
        got = []
        waiter = threading.Thread(
            target=lambda: got.append(side._block_report(0, branches)), daemon=True
        )
        waiter.start()
        waiter.join(60)
        assert got == [None]
    finally:
        side.close()


def test_a_branch_keeps_waiting_while_another_can_still_act(kvm, monkeypatch):
    """A vCPU asleep, but another branch has not finished: the wait goes on, and the report
    that branch's INIT and SIPI bring arrives."""
    monkeypatch.setattr(kvm_exec, "REPORT_TIMEOUT", 3600.0)
    side = _side(kvm)
    try:
        side.workers[1].submit(g.CMD_HLT)  # the AP is in UNINITIALIZED: it waits for a SIPI
        branches = kvm_exec._Branches(2)  # the other branch acts below, then finishes
        got = []
        waiter = threading.Thread(
            target=lambda: got.append(side._block_report(1, branches)), daemon=True
        )
        waiter.start()
        time.sleep(0.2)  # every vCPU thread asleep meanwhile: only the active branch holds it
        assert waiter.is_alive()
        side.vm.signal_msi(0xFEE01000, 0, 0x500)
        side.vm.signal_msi(0xFEE01000, 0, 0x610)  # SIPI 0x10: the AP lands and reports
        branches.finished()
        waiter.join(60)
        assert got and kvm_exec.describe_report(got[0]) == "sipi 0x10"
    finally:
        side.close()


def test_guest_code_exits_often_enough_here_to_tell_a_spin(kvm):
    """The calibration behind spinning(): on this host guest code exits at least every few
    milliseconds of CPU (a nested guest under TCG does not, and gets no spin detection)."""
    from kvmtest.exec import workers

    interval = workers.guest_exit_interval_ns()
    assert interval is not None and 0 < interval * workers.SPIN_EXITS <= 10 * workers.SPIN_MIN_NS


def test_a_stall_of_the_whole_machine_does_not_count_against_the_bound(kvm):
    """The host stopped this machine (here: SIGSTOP of the whole process) for longer than the
    settle bound, while the guest ran a command. The stall is not counted: the step still
    gets its report, which a wall-clock bound had given up on (seed 24's bursts)."""
    import os
    import subprocess

    from kvmtest import ops as f

    side = _side(kvm)
    try:
        stall = kvm_exec.REPORT_TIMEOUT + 0.5
        side.perform(f.GuestCommand(0, "spin", 300_000))  # about 0.3 s of guest code here
        stopper = subprocess.Popen(
            [
                "sh",
                "-c",
                f"sleep 0.05; kill -STOP {os.getpid()}; sleep {stall}; kill -CONT {os.getpid()}",
            ]
        )
        start = time.monotonic()
        out = side.settle()
        stopper.wait(10)
        assert time.monotonic() - start > stall  # the stall happened inside the settle
        assert out.get((0, "report")) == "spin", out
    finally:
        side.close()
