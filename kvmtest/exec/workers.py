"""One thread per vCPU for the kvm backend: it runs stepper commands and can be paused.

A vCPU ioctl on a vCPU whose thread is inside KVM_RUN blocks until KVM_RUN returns
(docs/host-findings.md#finding-2), so observing a busy vCPU means: ask its worker to pause,
kick it out of KVM_RUN,
wait until it is parked outside, read, and let it re-enter.
"""

import queue
import threading

from kvmtest import guest as g
from kvmtest.kvm.threadstate import blocked_in_kvm, on_cpu_ns, wait_asleep

IDLE, BUSY, PAUSED = "idle", "busy", "paused"

# CPU time a busy thread must burn with KVM's exit counter standing still to count as spinning
# inside KVM_RUN. A vCPU running guest code exits at every host timer tick (about once per
# millisecond of CPU on this host, docs/host-findings.md#finding-8), so 10 ms is ten ticks
# at HZ=1000 and still two and a half at HZ=250.
SPIN_CPU_NS = 10_000_000


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
        """Busy, and since the exit counter last moved the thread burned SPIN_CPU_NS of CPU:
        it never entered the guest, so it spins in KVM's own loop (a pending NMI in
        wait-for-SIPI, docs/semantics.md#rule-18), which only an INIT or SIPI from outside
        ends. False where the kernel has no statistics: then only the settle bound decides."""
        tid, stats = self.native_id, self.stepper.vcpu.stats()
        if tid is None or stats is None or not self.busy:
            return False
        exits, cpu = stats.read("exits"), on_cpu_ns(tid)
        if cpu is None:
            return False
        base = self._spin_base
        if base is None or base[0] != exits:
            self._spin_base = (exits, cpu)
            return False
        return cpu - base[1] >= SPIN_CPU_NS

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._outstanding > 0
