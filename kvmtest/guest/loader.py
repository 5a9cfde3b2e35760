"""Guest images and their loader: real-mode guests that script INIT/SIPI from inside a VM.

`GuestVm` builds a VM around one main image (`stepper` or `smp`, see guests/README.md): low RAM
with the image, a landing page on every SIPI vector page and the reset ROM at the top of 4 GiB,
everything else filled with an int3 tripwire. `Stepper` drives one vCPU of the stepper image:
it writes a command into the vCPU's mailbox and runs the vCPU on the calling thread until the
guest answers with a report (port I/O). A vCPU waiting for a command is outside KVM_RUN.

Threads: each Stepper belongs to one thread at a time (one thread per vCPU is the intended
use); `Stepper.kick()` from another thread makes that thread's `run()` return None, and a later
`run()` resumes the vCPU where it was (for example still halted inside KVM).
"""

from __future__ import annotations

import errno
import struct
import threading

from kvmtest.kvm import KvmError, exits
from kvmtest.kvm.threadstate import wait_asleep

from .images import ram_image, rom_image
from .layout import (
    CMD_CS_IP,
    CMD_HLT,
    CMD_ICR,
    CMD_JUMP,
    CMD_SPIN,
    CMD_X2APIC,
    ENTRY_BSP,
    IRQCHIPS,
    MAILBOX_BASE,
    MAILBOX_SIZE,
    MAIN_IMAGES,
    MAX_CPUS,
    PORT_CONSOLE,
    PORT_REPORT,
    PORT_VALUE,
    RAM_SIZE,
    RAM_SLOT,
    ROM_BASE,
    ROM_SIZE,
    ROM_SLOT,
    SMP_BROADCAST,
    SMP_ONLINE,
    SMP_PARAMS,
    SMP_X2APIC,
    VECTOR_FIRST,
    VECTOR_LAST,
    XAPIC_BASE,
)
from .protocol import ERRORS, REPORTS, GuestError, Kicked, Report, SmpResult, StrayExecution


class Stepper:
    """The host side of one vCPU: posts commands, runs the vCPU, decodes its reports."""

    def __init__(self, guest: GuestVm, index: int):
        self.guest = guest
        self.index = index
        self.apic_id = index  # KVM's initial APIC ID is the vcpu_id
        self.vcpu = guest.vcpus[index]
        self.console = bytearray()  # text written to PORT_CONSOLE
        self.interrupted: list[tuple] = []  # values of reports an INIT cut off
        self._values: list[int] = []

    # --- low level: usable from the vCPU's own thread ------------------------------------------

    def post(self, command: int, arg0: int = 0, arg1: int = 0) -> None:
        """Write a command into this vCPU's mailbox; the guest takes it when next run."""
        offset = MAILBOX_BASE + self.apic_id * MAILBOX_SIZE
        struct.pack_into("<HHII", self.guest.memory, offset, command, 0, arg0, arg1)

    def run(self) -> Report | None:
        """Run the vCPU until its next report; None when kick() interrupted it (call again
        to resume). Raises StrayExecution for the tripwire, GuestError for anything else odd."""
        while True:
            ret = self.vcpu.run_raw()
            if ret == -errno.EAGAIN:  # a vCPU leaving UNINITIALIZED: KVM_RUN wants a retry
                continue
            if ret == -errno.EINTR:  # kick() (signal or immediate_exit)
                return None
            if ret < 0:
                raise KvmError("KVM_RUN", -ret, f"vCPU {self.index}")
            exit_ = self.vcpu.last_exit()
            if isinstance(exit_, exits.Intr):
                return None
            if isinstance(exit_, exits.Io) and exit_.direction == "out" and exit_.count == 1:
                if exit_.port == PORT_VALUE and exit_.size == 4:
                    self._values.append(exit_.value())
                    continue
                if exit_.port == PORT_REPORT and exit_.size == 1:
                    return self._finish(exit_.value())
                if exit_.port == PORT_CONSOLE and exit_.size == 1:
                    self.console += exit_.data
                    continue
            raise GuestError(f"vCPU {self.index}: unexpected exit {exit_!r} at {self.where()}")

    def wait(self) -> Report:
        """run(), but a kick is an error: for callers that expect an answer."""
        report = self.run()
        if report is None:
            raise Kicked(f"vCPU {self.index}: kicked before it reported")
        return report

    def kick(self) -> None:
        """From another thread: make the run() in progress (or the next one) return None."""
        self.vcpu.kick()

    def where(self) -> str:
        """CS:IP and linear address of the vCPU, for error messages (vCPU must be stopped)."""
        regs, sregs = self.vcpu.get_regs(), self.vcpu.get_sregs()
        return f"{sregs.cs.selector:#06x}:{regs.rip:#06x} (linear {sregs.cs.base + regs.rip:#x})"

    def _finish(self, kind: int) -> Report:
        values, self._values = tuple(self._values), []
        if kind not in REPORTS:
            raise GuestError(f"vCPU {self.index}: unknown report kind {kind:#x} {values}")
        name, names = REPORTS[kind]
        if name in ("sipi", "reset") and len(values) > len(names):
            # An INIT can reset the vCPU in the middle of a report: the values sent before it
            # belong to a report that never finished. A landing or reset report starts a fresh
            # execution, so its own values are the last ones; keep the cut-off ones on record.
            self.interrupted.append(values[: -len(names)])
            values = values[-len(names) :]
        if len(values) != len(names):
            raise GuestError(f"vCPU {self.index}: {name} report with values {values}")
        report = Report(name, values)
        if name == "exception" and report.vector == 3:
            raise StrayExecution(self.index, report.cs, report.ip)
        if name == "error":
            what = ERRORS.get(report.code, f"error {report.code}")
            raise GuestError(f"vCPU {self.index}: guest says {what} ({report.value:#x})")
        if name in ("ready", "sipi", "reset") and report.apic_id != self.apic_id:
            raise GuestError(f"vCPU {self.index}: {report} from APIC ID {report.apic_id}")
        return report

    # --- commands (stepper image): post, then run until the answer -----------------------------

    def command(self, command: int, arg0: int = 0, arg1: int = 0) -> Report:
        self.post(command, arg0, arg1)
        return self.wait()

    def icr_write(self, icr: int) -> Report:
        """Write the 64-bit ICR in the current APIC mode (xAPIC: ICR2 = bits 63:32)."""
        return self.command(CMD_ICR, icr & 0xFFFFFFFF, (icr >> 32) & 0xFFFFFFFF)

    def enable_x2apic(self) -> Report:
        return self.command(CMD_X2APIC)

    def hlt(self) -> Report:
        """HLT with IF = 0; the report comes after the wake-up (NMI or SIPI), or an INIT's
        reset report instead."""
        return self.command(CMD_HLT)

    def report_cs_ip(self) -> Report:
        return self.command(CMD_CS_IP)

    def spin(self, iterations: int) -> Report:
        """A counted guest loop (about 1 us per iteration on an emulating host)."""
        return self.command(CMD_SPIN, iterations)

    def jump(self, address: int) -> Report:
        """Far jump to a linear address below 1 MiB: lands in a landing page (sipi report)
        or in the tripwire (StrayExecution)."""
        if not 0 <= address < RAM_SIZE:
            raise ValueError(f"jump target {address:#x} is not below 1 MiB")
        return self.command(CMD_JUMP, address)


class GuestVm:
    """A VM with low RAM, the reset ROM, one main image and nr_vcpus vCPUs (0 is the BSP).

    image: "stepper" (host-driven command loops) or "smp" (autonomous boot, see smp_boot).
    x2apic: the BSP switches to x2APIC mode first (stepper: in start(); smp: the guest does).
    irqchip: "kernel" (in-kernel PIC, IOAPIC, LAPICs) or "split" (LAPICs only in the kernel).
    """

    def __init__(
        self,
        kvm,
        nr_vcpus: int,
        image: str = "stepper",
        *,
        x2apic: bool = False,
        irqchip: str = "kernel",
    ):
        if image not in MAIN_IMAGES:
            raise ValueError(f"image must be one of {MAIN_IMAGES}, not {image!r}")
        if irqchip not in IRQCHIPS:
            raise ValueError(f"irqchip must be one of {IRQCHIPS}, not {irqchip!r}")
        if not 1 <= nr_vcpus <= MAX_CPUS:
            raise ValueError(f"nr_vcpus must be 1..{MAX_CPUS}")
        self.image = image
        self.x2apic = x2apic
        self._smp_booted = False
        self.vm = kvm.create_vm()
        try:
            self._build(kvm, nr_vcpus, irqchip)
        except BaseException:
            self.vm.close()
            raise

    def _build(self, kvm, nr_vcpus: int, irqchip: str) -> None:
        if irqchip == "kernel":
            self.vm.create_irqchip()
        else:
            self.vm.enable_split_irqchip()
        self.memory = self.vm.set_user_memory_region(RAM_SLOT, 0, RAM_SIZE)
        self.rom = self.vm.set_user_memory_region(ROM_SLOT, ROM_BASE, ROM_SIZE)
        self._load_images()
        cpuid = kvm.get_supported_cpuid()  # includes x2APIC (CPUID.1:ECX.21) when offered
        self.vcpus = []
        for index in range(nr_vcpus):
            vcpu = self.vm.create_vcpu(index)
            vcpu.set_cpuid2(cpuid)
            self.vcpus.append(vcpu)
        # The vCPU created last is missing from KVM's APIC map until some map-dirtying event,
        # so an IPI to it would be lost (host-findings.md#finding-3). QEMU does a KVM_SET_LAPIC
        # on every vCPU after creating them all; so do we.
        for vcpu in self.vcpus:
            vcpu.set_lapic(vcpu.get_lapic())
        self._set_bsp_registers(self.vcpus[0])
        self.steppers = [Stepper(self, index) for index in range(nr_vcpus)]

    def _load_images(self) -> None:
        self.memory[:] = ram_image(self.image)
        self.rom[:] = rom_image()

    @staticmethod
    def _set_bsp_registers(vcpu) -> None:
        """Real mode at 0:ENTRY_BSP, with FS based at the xAPIC page ("unreal" FS): the only
        way real-mode code reaches 0xfee00000 without switching modes itself."""
        sregs = vcpu.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss, sregs.gs, sregs.fs):
            seg.selector = 0
            seg.base = 0
            seg.limit = 0xFFFF
        sregs.fs.base = XAPIC_BASE
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip = ENTRY_BSP
        regs.rflags = 0x2
        regs.rsp = 0
        vcpu.set_regs(regs)

    # --- stepper image ------------------------------------------------------------------------

    @property
    def bsp(self) -> Stepper:
        return self.steppers[0]

    def stepper(self, index: int) -> Stepper:
        return self.steppers[index]

    def start(self) -> Report:
        """Run the BSP of the stepper image to its ready report (switching to x2APIC first
        if asked); returns the ready report."""
        if self.image != "stepper":
            raise GuestError("start() drives the stepper image; use smp_boot()")
        ready = self.bsp.wait()
        if ready.kind != "ready":
            raise GuestError(f"BSP started with {ready}, expected a ready report")
        if self.x2apic:
            switched = self.bsp.enable_x2apic()
            if switched.kind != "x2apic" or not switched.apic_base & 0x400:
                raise GuestError(f"BSP could not enable x2APIC: {switched}")
        return ready

    # --- smp image ----------------------------------------------------------------------------

    def smp_boot(
        self,
        *,
        broadcast: bool = False,
        vector: int = 0x10,
        wait_limit: int = 300_000,
        timeout: float = 20.0,
    ) -> SmpResult:
        """Run every vCPU on its own thread; the BSP brings the APs up by itself (INIT-SIPI-SIPI
        per APIC ID, or INIT + SIPI to all-but-self when broadcast) and reports the count.
        Then kicks the APs out of KVM_RUN and reads their MP state."""
        if self.image != "smp":
            raise GuestError("smp_boot() needs the smp image")
        if self._smp_booted:
            raise GuestError("smp_boot() runs once per GuestVm: its BSP is parked afterwards")
        self._smp_booted = True
        if not VECTOR_FIRST <= vector <= VECTOR_LAST:
            raise ValueError(f"vector {vector:#x} has no landing page")
        flags = (SMP_BROADCAST if broadcast else 0) | (SMP_X2APIC if self.x2apic else 0)
        nr = len(self.vcpus)
        struct.pack_into("<HHHHI", self.memory, SMP_PARAMS, nr, flags, vector, 0, wait_limit)
        struct.pack_into("<H", self.memory, SMP_ONLINE, 0)

        stop = threading.Event()
        errors: list[BaseException] = []
        bsp_report: list[Report] = []

        ap_tids: dict[int, int] = {}

        def ap_loop(stepper: Stepper) -> None:
            ap_tids[stepper.index] = threading.get_native_id()
            try:
                while not stop.is_set():
                    report = stepper.run()
                    if report is not None:
                        raise GuestError(f"AP {stepper.index} reported {report}")
            except BaseException as exc:  # handed to the caller below
                errors.append(exc)

        def bsp_loop() -> None:
            try:
                report = self.bsp.run()
                if report is not None:
                    bsp_report.append(report)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=ap_loop, args=(s,), name=f"vcpu{s.index}", daemon=True)
            for s in self.steppers[1:]
        ]
        threads.append(threading.Thread(target=bsp_loop, name="vcpu0", daemon=True))
        for thread in threads:
            thread.start()
        threads[-1].join(timeout)
        # The BSP reports once every AP has checked in, but an AP may still be on its way from
        # the check-in to its HLT: wait until each AP thread sleeps in KVM_RUN before kicking,
        # or its MP state would be read as RUNNABLE by accident of timing.
        for stepper in self.steppers[1:]:
            wait_asleep(
                lambda s=stepper: ap_tids.get(s.index),
                lambda s=stepper: s.vcpu.in_kvm_run,
                timeout=1.0,
            )
        stop.set()
        for stepper in self.steppers:
            stepper.kick()
        for thread in threads:
            thread.join(5.0)
            if thread.is_alive():
                raise GuestError(f"{thread.name} did not leave KVM_RUN after a kick")
        if errors:
            raise errors[0]
        if not bsp_report:
            raise GuestError(f"the BSP did not report within {timeout} s")
        report = bsp_report[0]
        if report.kind != "smp":
            raise GuestError(f"BSP reported {report}, expected an smp report")
        (counter,) = struct.unpack_from("<H", self.memory, SMP_ONLINE)
        states = tuple(vcpu.get_mp_state() for vcpu in self.vcpus[1:])
        return SmpResult(report.online, report.expected, counter, report.wait_left, states)

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the VM; our views of its memory go first so that it can be unmapped now."""
        for view in (getattr(self, "memory", None), getattr(self, "rom", None)):
            try:
                if view is not None:
                    view.release()
            except BufferError:  # someone still holds a slice: the GC unmaps it later
                pass
        self.vm.close()

    def __enter__(self) -> GuestVm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
