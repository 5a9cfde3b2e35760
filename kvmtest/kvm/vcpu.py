"""Vcpu: one vCPU fd, its kvm_run page, and the state ioctls."""

import errno
import mmap
import signal
import threading
import time

from . import _lib, exits, stats
from .errors import KvmError
from .fd import OwnedFd

# The signal used to kick a vCPU thread out of KVM_RUN. Its handler is a C no-op installed
# without SA_RESTART, so the blocked ioctl returns EINTR (docs/host-findings.md#finding-2).
KICK_SIGNAL = signal.SIGUSR1
_kick_lock = threading.Lock()
_kick_installed = False


def _install_kick_handler() -> None:
    global _kick_installed
    with _kick_lock:
        if not _kick_installed:
            if _lib.lib.kvmtest_install_kick_handler(KICK_SIGNAL) != 0:
                raise KvmError("sigaction(KICK_SIGNAL)", _lib.ffi.errno)
            _kick_installed = True


class Vcpu(OwnedFd):
    """A vCPU. run() may be called from any thread; kick() from any other."""

    def __init__(self, vm, fd: int, vcpu_id: int):
        super().__init__(fd)
        self.vm = vm
        self.vcpu_id = vcpu_id
        self._thread = None
        self._kick_lock = threading.Lock()
        self._kick_pending = False
        # kvm_run is mapped at the first KVM_RUN: most host-driven traces never run a vCPU.
        self._run_map = self._run_buffer = self._run = None
        self._exit = _lib.ffi.new("struct kvmtest_exit *")
        self._stats = False  # not opened yet (kvmtest.kvm.stats; None: the kernel has none)
        _install_kick_handler()

    def _map_run(self) -> None:
        """Map kvm_run (with _kick_lock held, before the first KVM_RUN)."""
        size = self.vm.kvm.get_vcpu_mmap_size()
        self._run_map = mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_buffer = _lib.ffi.from_buffer(self._run_map)
        self._run = _lib.ffi.cast("struct kvm_run *", self._run_buffer)

    def _release(self, wait: float = 2.0) -> None:
        """Unmap kvm_run, but never under a thread still inside KVM_RUN: that thread's C code
        reads the page when the ioctl returns (a segfault). Kick it out and wait; one that does
        not come out keeps the mapping (leaked with the process, never a crash)."""
        if self._stats:
            self._stats.close()
        deadline = time.monotonic() + wait
        while True:
            with self._kick_lock:
                if self._thread is None:
                    # run() from now on sees the harmless page and fd -1 (EBADF).
                    self._dead_page = _lib.ffi.new("char[]", mmap.PAGESIZE)
                    mapped = self._run is not None
                    self._run = _lib.ffi.cast("struct kvm_run *", self._dead_page)
                    if not mapped:
                        return  # never ran: nothing is mapped
                    break
            if time.monotonic() > deadline:
                self._run_map_leaked = True
                return
            self.kick()
            time.sleep(0.0005)
        _lib.ffi.release(self._run_buffer)
        try:
            self._run_map.close()
        except BufferError:  # a caller still holds a slice; the GC unmaps it later
            pass

    # --- running -------------------------------------------------------------------------

    def run_raw(self) -> int:
        """KVM_RUN; returns 0 or -errno. The decoded exit is in self.last_exit().

        Every kick() is answered by exactly one -EINTR: one that lands while KVM_RUN returns
        for another reason (an I/O exit, -EAGAIN) stays pending and ends the next call at once,
        so a caller that retries (an AP leaving UNINITIALIZED) can never swallow it."""
        with self._kick_lock:
            if self._kick_pending:
                self._kick_pending = False
                if self._run is not None:
                    _lib.lib.kvmtest_set_immediate_exit(self._run, 0)
                self._exit.reason = _lib.lib.KVM_EXIT_INTR
                return -errno.EINTR
            if self._run is None:
                self._map_run()
            self._thread = threading.get_ident()
            fd, run = self._fd, self._run  # as of now: close() waits for this call to end
        ret = _lib.lib.kvmtest_run(fd, run, self._exit)
        err = _lib.ffi.errno
        with self._kick_lock:
            self._thread = None
            _lib.lib.kvmtest_set_immediate_exit(self._run, 0)
            if ret < 0 and err == errno.EINTR:
                self._kick_pending = False  # this return answers the kick
        return ret if ret >= 0 else -err

    def run(self) -> exits.Exit:
        """KVM_RUN until the next exit to userspace; a kick returns exits.Intr()."""
        ret = self.run_raw()
        if ret == -4:  # EINTR: a signal or immediate_exit
            return exits.Intr()
        if ret < 0:
            raise KvmError("KVM_RUN", -ret)
        return self.last_exit()

    def last_exit(self) -> exits.Exit:
        out = self._exit
        reason = out.reason
        lib = _lib.lib
        if reason == lib.KVM_EXIT_IO:
            start = out.io_data_offset
            data = self._run_map[start : start + out.io_size * out.io_count]
            direction = "out" if out.io_direction == lib.KVM_EXIT_IO_OUT else "in"
            return exits.Io(out.io_port, direction, out.io_size, out.io_count, data, start)
        if reason == lib.KVM_EXIT_MMIO:
            data = bytes(_lib.ffi.buffer(out.mmio_data, out.mmio_len))
            return exits.Mmio(out.mmio_phys_addr, data, out.mmio_len, bool(out.mmio_is_write))
        if reason == lib.KVM_EXIT_HLT:
            return exits.Hlt()
        if reason == lib.KVM_EXIT_SHUTDOWN:
            return exits.Shutdown()
        if reason == lib.KVM_EXIT_INTR:
            return exits.Intr()
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            return exits.FailEntry(out.fail_entry_reason)
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            data = tuple(out.internal_data[i] for i in range(min(out.internal_ndata, 4)))
            return exits.InternalError(out.internal_suberror, data)
        if reason == 24:  # KVM_EXIT_SYSTEM_EVENT
            return exits.SystemEvent(out.system_event_type)
        return exits.Unknown(reason)

    def complete_io_in(self, exit_: exits.Io, data: bytes) -> None:
        """Give an IN its value; the guest sees it when run() is next called."""
        self._run_map[exit_.data_offset : exit_.data_offset + len(data)] = data

    def kick(self) -> None:
        """Make a concurrent run() (or the next one) return exits.Intr(): immediate_exit for a
        thread about to enter KVM_RUN, a signal for one already inside it."""
        with self._kick_lock:
            self._kick_pending = True
            if self._run is not None:  # not mapped: it never ran, the pending kick suffices
                _lib.lib.kvmtest_set_immediate_exit(self._run, 1)
            thread = self._thread
        if thread is not None:
            try:
                signal.pthread_kill(thread, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    @property
    def in_kvm_run(self) -> bool:
        """A thread is inside run() on this vCPU right now."""
        return self._thread is not None

    def set_immediate_exit(self, value: bool) -> None:
        with self._kick_lock:
            if self._run is None:
                self._map_run()
            _lib.lib.kvmtest_set_immediate_exit(self._run, int(value))

    # --- state ioctls --------------------------------------------------------------------

    def _ioctl(self, name: str, arg=None) -> int:
        """A vCPU ioctl; while a thread is inside KVM_RUN on this vCPU it waits for the vCPU's
        mutex, so then it releases the GIL (kvmtest.kvm._lib)."""
        return _lib.ioctl(self._fd, name, arg, may_wait=self._thread is not None)

    def _ioctl_raw(self, name: str, arg=None) -> int:
        return _lib.ioctl_raw(self._fd, name, arg, may_wait=self._thread is not None)

    def _get(self, name: str, ctype: str):
        value = _lib.ffi.new(ctype)
        self._ioctl(name, value)
        return value

    def get_regs(self):
        return self._get("KVM_GET_REGS", "struct kvm_regs *")

    def set_regs(self, regs) -> None:
        self._ioctl("KVM_SET_REGS", regs)

    def get_sregs(self):
        return self._get("KVM_GET_SREGS", "struct kvm_sregs *")

    def set_sregs(self, sregs) -> None:
        self._ioctl("KVM_SET_SREGS", sregs)

    def stats(self):
        """The vCPU's statistics (kvmtest.kvm.stats.VcpuStats), opened at the first call;
        None on a kernel that has none. KVM_GET_STATS_FD takes the vCPU's mutex, so the first
        call waits while a thread is in KVM_RUN: make it before (VcpuWorker does)."""
        if self._stats is False:
            self._stats = stats.open_vcpu_stats(self)
        return self._stats

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE. Since Linux 3.10 this processes pending INIT/SIPI first."""
        return self._get("KVM_GET_MP_STATE", "struct kvm_mp_state *").mp_state

    def set_mp_state_raw(self, mp_state: int) -> int:
        arg = _lib.ffi.new("struct kvm_mp_state *", {"mp_state": mp_state})
        return self._ioctl_raw("KVM_SET_MP_STATE", arg)

    def set_mp_state(self, mp_state: int) -> None:
        ret = self.set_mp_state_raw(mp_state)
        if ret < 0:
            raise KvmError("KVM_SET_MP_STATE", -ret, f"mp_state={mp_state}")

    def get_lapic(self) -> bytes:
        state = self._get("KVM_GET_LAPIC", "struct kvm_lapic_state *")
        return bytes(_lib.ffi.buffer(state.regs))

    def set_lapic(self, regs: bytes) -> None:
        state = _lib.ffi.new("struct kvm_lapic_state *")
        _lib.ffi.memmove(state.regs, regs, len(regs))
        self._ioctl("KVM_SET_LAPIC", state)

    def get_vcpu_events(self):
        return self._get("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events *")

    def set_vcpu_events_raw(self, events) -> int:
        return self._ioctl_raw("KVM_SET_VCPU_EVENTS", events)

    def set_vcpu_events(self, events) -> None:
        ret = self.set_vcpu_events_raw(events)
        if ret < 0:
            raise KvmError("KVM_SET_VCPU_EVENTS", -ret)

    def get_msrs(self, indices) -> dict:
        indices = list(indices)
        ffi = _lib.ffi
        size = ffi.sizeof("struct kvm_msrs") + len(indices) * ffi.sizeof("struct kvm_msr_entry")
        buffer = ffi.new("char[]", size)
        msrs = ffi.cast("struct kvm_msrs *", buffer)
        msrs.nmsrs = len(indices)
        for i, index in enumerate(indices):
            msrs.entries[i].index = index
        done = self._ioctl("KVM_GET_MSRS", msrs)
        if done != len(indices):
            raise KvmError("KVM_GET_MSRS", 22, f"MSR {indices[done]:#x} not readable")
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(done)}

    def set_msrs(self, values: dict) -> None:
        ffi = _lib.ffi
        size = ffi.sizeof("struct kvm_msrs") + len(values) * ffi.sizeof("struct kvm_msr_entry")
        buffer = ffi.new("char[]", size)
        msrs = ffi.cast("struct kvm_msrs *", buffer)
        msrs.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            msrs.entries[i].index = index
            msrs.entries[i].data = data
        done = self._ioctl("KVM_SET_MSRS", msrs)
        if done != len(values):
            index = list(values)[done]
            raise KvmError("KVM_SET_MSRS", 22, f"MSR {index:#x} not writable")

    def set_cpuid2(self, cpuid) -> None:
        self._ioctl("KVM_SET_CPUID2", cpuid.pointer)

    def nmi_raw(self) -> int:
        return self._ioctl_raw("KVM_NMI")

    def nmi(self) -> None:
        self._ioctl("KVM_NMI")

    def smi_raw(self) -> int:
        return self._ioctl_raw("KVM_SMI")

    def smi(self) -> None:
        self._ioctl("KVM_SMI")
