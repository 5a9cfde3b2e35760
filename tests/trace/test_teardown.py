"""A timed-out trace is torn down completely while the run goes on: no VM, fd or vCPU thread
is left behind (the Reliability issue: timed-out traces used to keep running)."""

import os
import threading

from kvmtest import suite
from kvmtest.suite import choose_backend, run_all
from kvmtest.trace import Status, parse_trace

SLOW = """\
name: slow
setup: {vcpus: 2, guest: stepper}
steps:
  - start: 0
  - start: 1
  - msi: {dest: 1, delivery: init}
  - msi: {dest: 1, delivery: sipi, vector: 0x10}
  - spin: {vcpu: 0, iterations: 100000}
  - hlt: 1
  - spin: {vcpu: 0, iterations: 100000}
  - observe: {vcpu: 1, read: [mp_state]}
"""
QUICK = "name: quick\nsetup: {vcpus: 2}\nsteps:\n  - msi: {dest: 1, delivery: init}\n"


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_forced_timeout_leaves_no_vm_fd_or_thread(kvm):
    context = choose_backend("kvm", require_kvm=True).context
    try:
        slow, quick = parse_trace(SLOW, "slow.yaml"), parse_trace(QUICK, "quick.yaml")
        run_all([quick], "mainline", context)  # warm up: imports, signal handler, caches
        fds, threads = _fds(), set(threading.enumerate())
        results = run_all([slow, slow], "mainline", context, jobs=2, timeout=0.05)
        assert [r.status for r in results] == [Status.ERROR, Status.ERROR]
        assert all(r.timed_out and "its VM was torn down" in r.message for r in results)
        # The run goes on after them (a separate call: under load 0.05 s is no time for any VM).
        assert run_all([quick], "mainline", context)[0].status is Status.PASS
        assert _fds() == fds
        # Nothing busy is left: a new thread can only be an idle trace runner, kept for reuse.
        idle = {runner.thread for runner in suite._TraceThread._idle}
        assert set(threading.enumerate()) - threads <= idle, threading.enumerate()
    finally:
        context.kvm.close()
