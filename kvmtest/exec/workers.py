"""One thread per vCPU for the kvm backend: it runs stepper commands and can be paused.

A vCPU ioctl on a vCPU whose thread is inside KVM_RUN blocks until KVM_RUN returns
(docs/host-findings.md#finding-2), so observing a busy vCPU means: ask its worker to pause,
kick it out of KVM_RUN,
wait until it is parked outside, read, and let it re-enter.
"""

import functools
import queue
import threading
import time

from kvmtest import guest as g
from kvmtest.kvm.threadstate import blocked_in_kvm, on_cpu_ns, wait_asleep

IDLE, BUSY, PAUSED = "idle", "busy", "paused"

# A busy thread counts as spinning inside KVM_RUN once it burned SPIN_EXITS times the CPU time
# that guest code takes per exit on this host (guest_exit_interval_ns), and at least
# SPIN_MIN_NS, while KVM's exit counter stood still (docs/host-findings.md#finding-8). Not
# less: under fuzz load one VM exit's handling was charged 12-14 ms of the thread's CPU (kernel
# work of other VMs' teardown done on its time, say), and 10 ms took it for a spin (seed 21).
SPIN_EXITS = 20
SPIN_MIN_NS = 50_000_000
CALIBRATION_CPU_NS = 20_000_000  # the guest code's CPU time the calibration looks at
CALIBRATION_SECONDS = 2.0  # at most, on a loaded host


@functools.cache
def guest_exit_interval_ns() -> int | None:
    """CPU time per exit of a vCPU that runs guest code without end, measured once per process
    on this host's KVM (the stepper's spin loop, for 20 ms of its CPU): about 1 ms here, a host
    timer tick. None where guest code exits too rarely to tell it from a thread that spins in
    KVM's own loop (a nested guest under TCG ran 10 ms without an exit), where the kernel has
    no statistics, or where the measurement fails: then spinning() is never true and the
    settle bound decides."""
    try:
        return _measure_exit_interval()
    except Exception:  # no VM to measure with: no spin detection, never a failed trace
        return None


def _measure_exit_interval() -> int | None:
    from kvmtest.kvm import Kvm

    with Kvm() as kvm, g.GuestVm(kvm, 1) as vm:
        vm.start()
        stats = vm.bsp.vcpu.stats()
        if stats is None:
            return None
        vm.bsp.post(g.CMD_SPIN, 0xFFFFFFFF)
        box: list = []
        runner = threading.Thread(
            target=lambda: (box.append(threading.get_native_id()), vm.bsp.run()), daemon=True
        )
        runner.start()
        while not box:
            time.sleep(0.001)
        exits0, cpu0 = stats.read("exits"), on_cpu_ns(box[0])
        deadline = time.monotonic() + CALIBRATION_SECONDS
        cpu = cpu0  # None throughout where schedstat is missing
        while cpu is not None and cpu - cpu0 < CALIBRATION_CPU_NS and time.monotonic() < deadline:
            time.sleep(0.002)
            cpu = on_cpu_ns(box[0])
        exits = stats.read("exits") - exits0
        vm.bsp.kick()
        runner.join(5)
    if cpu is None or cpu - cpu0 < CALIBRATION_CPU_NS or exits < 5:
        return None  # no schedstat, too little CPU seen, or too few exits in it
    return (cpu - cpu0) // exits


class VcpuWorker:
    def __init__(self, stepper: g.Stepper):
        self.stepper = stepper
        self.reports: queue.Queue = queue.Queue()  # Report or an exception
        self._commands: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._state = IDLE
        self._outstanding = 0  # commands submitted and not yet answered (queued ones count)
        self._pause_requested = False
        self._stopping = False
        self._spin_base = None  # (exits, on-CPU ns) when the exit counter last moved
        self.native_id = None  # the worker thread's kernel TID, set when it starts
        self._thread = threading.Thread(target=self._loop, name=f"vcpu{stepper.index}", daemon=True)
        self._thread.start()

    # --- the worker thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        self.native_id = threading.get_native_id()
        self.stepper.vcpu.stats()  # before KVM_RUN: the ioctl waits for the vCPU's mutex
        while True:
            item = self._commands.get()
            with self._cond:
                if item is None or self._stopping:
                    return  # a command queued behind the stop must not re-enter KVM_RUN
                self._state = BUSY
            command, arg0, arg1 = item
            if command is not None:
                self.stepper.post(command, arg0, arg1)
            try:
                self.reports.put(self._run_until_report())
            except Exception as exc:  # handed to the engine, which reports an error
                self.reports.put(exc)
            with self._cond:
                self._outstanding -= 1
                self._state = IDLE
                self._cond.notify_all()

    def _run_until_report(self):
        while True:
            report = self.stepper.run()
            if report is not None:
                return report
            with self._cond:  # kicked: stop, park if the host asked, or it was a stale kick
                if self._stopping:
                    return None
                if self._pause_requested:
                    self._state = PAUSED
                    self._cond.notify_all()
                    while self._pause_requested and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return None
                    self._state = BUSY

    # --- the engine's side ---------------------------------------------------------------------

    def submit(self, command=None, arg0: int = 0, arg1: int = 0) -> None:
        """Start a command (None: just enter KVM_RUN, as an AP waiting for its SIPI does)."""
        with self._cond:
            self._outstanding += 1
        self.forget_spin()
        self._commands.put((command, arg0, arg1))

    def pause(self, timeout: float = 5.0) -> None:
        """Return once the vCPU's thread is outside KVM_RUN (idle or parked)."""
        with self._cond:
            if not self._outstanding:
                return
            self._pause_requested = True
        self.stepper.kick()  # a command that has not started yet takes it at its first KVM_RUN
        with self._cond:
            if not self._cond.wait_for(
                lambda: not self._outstanding or self._state == PAUSED, timeout
            ):
                raise TimeoutError(f"vCPU {self.stepper.index} did not leave KVM_RUN after a kick")

    def resume(self) -> None:
        with self._cond:
            self._pause_requested = False
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread, kicking it out of KVM_RUN if needed; the vCPU is left as it is."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.stepper.kick()
        self._commands.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"vCPU {self.stepper.index}: worker did not stop")

    def wait_asleep(self, timeout: float) -> bool:
        """Wait until the thread sleeps inside KVM_RUN (see kvmtest.kvm.threadstate)."""

        def in_kvm_run() -> bool:
            with self._cond:
                busy = self._outstanding > 0
            return busy and self.stepper.vcpu.in_kvm_run

        return wait_asleep(lambda: self.native_id, in_kvm_run, timeout)

    def asleep(self) -> bool:
        """Right now: busy with a command, inside KVM_RUN, and blocked there by KVM."""
        tid = self.native_id
        return (
            tid is not None and self.busy and self.stepper.vcpu.in_kvm_run and blocked_in_kvm(tid)
        )

    def forget_spin(self) -> None:
        """Start spinning()'s window again: something happened that may end a spin."""
        self._spin_base = None

    def spinning(self) -> bool:
        """Busy, and since the exit counter last moved the thread burned the CPU time of
        SPIN_EXITS exits of guest code (at least SPIN_MIN_NS):
        it never entered the guest, so it spins in KVM's own loop (a pending NMI in
        wait-for-SIPI, docs/semantics.md#rule-18), which only an INIT or SIPI from outside
        ends. False where the kernel has no statistics: then only the settle bound decides."""
        tid, stats = self.native_id, self.stepper.vcpu.stats()
        if tid is None or stats is None or not self.busy:
            return False
        interval = guest_exit_interval_ns()
        if interval is None:
            return False
        exits, cpu = stats.read("exits"), on_cpu_ns(tid)
        if cpu is None:
            return False
        base = self._spin_base
        if base is None or base[0] != exits:
            self._spin_base = (exits, cpu)
            return False
        return cpu - base[1] >= max(SPIN_MIN_NS, SPIN_EXITS * interval)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._outstanding > 0
