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
import functools
import struct
import threading
from dataclasses import dataclass
from importlib import resources

from kvmtest.kvm import KvmError, exits
from kvmtest.threadstate import wait_asleep

# --- memory map, ports and protocol numbers: mirror of guests/src/layout.inc -----------------
# (tests/guests/test_images.py checks that every `.set` there has the same value here)
RAM_SIZE = 0x100000
IVT_BASE = 0x0000
STUBS_BASE = 0x0400
STUB_SIZE = 5
ENTRY_BSP = 0x1000
ENTRY_AP = 0x1003
ENTRY_RESET = 0x1006
IMAGE_LIMIT = 0x3000
MAILBOX_BASE = 0x3000
MAILBOX_SIZE = 16
MAX_CPUS = 64
SMP_PARAMS = 0x3400
SMP_ONLINE = 0x3410
STACK_BASE = 0x4000
STACK_SIZE = 0x100
VECTOR_FIRST = 0x08
VECTOR_LAST = 0x9F
ROM_BASE = 0xFFFF0000
ROM_SIZE = 0x10000
RESET_OFFSET = 0xFFF0
XAPIC_BASE = 0xFEE00000
XAPIC_ID = 0x20
XAPIC_ICR_LO = 0x300
XAPIC_ICR_HI = 0x310
MSR_APIC_BASE = 0x1B
MSR_X2APIC_ID = 0x802
MSR_X2APIC_ICR = 0x830
GDT_SEL_XAPIC = 0x08
PORT_CONSOLE = 0xE9
PORT_VALUE = 0xEA
PORT_REPORT = 0xEB
CMD_NONE = 0x00
CMD_ICR = 0x10
CMD_X2APIC = 0x11
CMD_HLT = 0x12
CMD_CS_IP = 0x13
CMD_SPIN = 0x14
CMD_JUMP = 0x15
REP_READY = 0x01
REP_SIPI = 0x02
REP_RESET = 0x03
REP_SMP = 0x05
REP_EXCEPTION = 0x0E
REP_ERROR = 0x0F
ERR_BAD_COMMAND = 1
ERR_APIC_ID = 2
SMP_BROADCAST = 1
SMP_X2APIC = 2
TRIPWIRE = 0xCC

RAM_SLOT = 0
ROM_SLOT = 1
MAIN_IMAGES = ("stepper", "smp")
IRQCHIPS = ("kernel", "split")
MP_STATE_HALTED = 3

# report kind -> (name, field names)
REPORTS = {
    REP_READY: ("ready", ("apic_id",)),
    REP_SIPI: ("sipi", ("vector", "apic_id")),
    REP_RESET: ("reset", ("cs", "apic_id")),
    REP_SMP: ("smp", ("online", "expected", "wait_left")),
    REP_EXCEPTION: ("exception", ("vector", "cs", "ip")),
    REP_ERROR: ("error", ("code", "value")),
    CMD_ICR: ("icr", ()),
    CMD_X2APIC: ("x2apic", ("apic_base",)),
    CMD_HLT: ("hlt", ()),
    CMD_CS_IP: ("cs_ip", ("cs", "ip")),
    CMD_SPIN: ("spin", ()),
}
ERRORS = {ERR_BAD_COMMAND: "unknown command", ERR_APIC_ID: "APIC ID out of range"}


class GuestError(Exception):
    """A guest misbehaved: stray execution, an unexpected exit, a malformed report."""


class StrayExecution(GuestError):
    """The tripwire fired: a vCPU executed memory that holds no code."""

    def __init__(self, vcpu_index: int, cs: int, ip: int):
        self.vcpu_index = vcpu_index
        self.cs = cs
        self.ip = ip
        self.address = (cs << 4) + ip - 1  # the int3 pushed the address after itself
        note = " (or 0xffff0000 + IP in the reset ROM)" if cs == 0xF000 else ""
        super().__init__(
            f"vCPU {vcpu_index}: stray execution at {self.address:#x} "
            f"(CS:IP {cs:#06x}:{ip - 1:#06x}){note}"
        )


class Kicked(GuestError):
    """A blocking command was interrupted by kick() before the guest reported."""


@dataclass(frozen=True)
class Report:
    """One guest report: its kind ("ready", "sipi", "icr", ...) and values; fields by name."""

    kind: str
    values: tuple[int, ...]

    def fields(self) -> dict[str, int]:
        for name, names in REPORTS.values():
            if name == self.kind:
                return dict(zip(names, self.values, strict=False))
        return {}

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):  # copy/pickle probe special names before `kind` exists
            raise AttributeError(name)
        fields = self.fields()
        if name in fields:
            return fields[name]
        raise AttributeError(f"{self.kind} report has no field {name!r}")

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v:#x}" for k, v in self.fields().items())
        return f"{self.kind}({inner})"


@dataclass(frozen=True)
class SmpResult:
    """What an autonomous SMP boot showed: the BSP's count and each AP's state afterwards."""

    online: int  # reported by the BSP
    expected: int  # number of APs
    counter: int  # SMP_ONLINE read by the host after the APs were stopped
    wait_left: int  # iterations of the BSP's counted wait that were not needed
    ap_mp_states: tuple[int, ...]  # KVM_GET_MP_STATE of every AP, after kicking it

    @property
    def all_online(self) -> bool:
        return self.online == self.expected == self.counter and all(
            state == MP_STATE_HALTED for state in self.ap_mp_states
        )


@functools.cache
def image(name: str) -> bytes:
    """The built image `name` (package data, produced by guests/build.py)."""
    return (resources.files("kvmtest") / "guest_images" / f"{name}.bin").read_bytes()


@functools.cache
def ram_image(main: str) -> bytes:
    """Low RAM as the loader lays it out: tripwire everywhere, the main image at 0, zeroed
    mailboxes and SMP parameters, a landing page on every vector page. Built once."""
    ram = bytearray([TRIPWIRE]) * RAM_SIZE
    code = image(main)
    if len(code) > IMAGE_LIMIT:
        raise GuestError(f"{main}.bin is larger than its slot ({IMAGE_LIMIT:#x} bytes)")
    ram[: len(code)] = code
    ram[MAILBOX_BASE:STACK_BASE] = bytes(STACK_BASE - MAILBOX_BASE)
    landing = image("landing")
    for vector in range(VECTOR_FIRST, VECTOR_LAST + 1):
        ram[vector << 12 : (vector << 12) + len(landing)] = landing
    return bytes(ram)


@functools.cache
def rom_image() -> bytes:
    """The reset ROM: tripwire, and the reset code in its last 16 bytes."""
    reset = image("reset")
    return (
        bytes([TRIPWIRE]) * RESET_OFFSET
        + reset
        + bytes([TRIPWIRE]) * (ROM_SIZE - RESET_OFFSET - len(reset))
    )


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
        # so an IPI to it would be lost (host findings #3). QEMU does a KVM_SET_LAPIC on every
        # vCPU after creating them all; so do we.
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
