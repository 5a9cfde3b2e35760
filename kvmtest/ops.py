"""The trace format as data: what load.py builds and the engine replays.

A trace is a setup (how the VM is built) and a list of steps. Every step remembers its line in
the file, so a mismatch or a malformed step is reported as file:line. docs/traces.md is the
user-facing description; keep the two in step.
"""

from dataclasses import dataclass, field

from reference import MpState

# KVM_MP_STATE_* by name; the model's enum carries the kernel's values.
MP_STATES = {state.name: int(state) for state in MpState}
MP_STATE_NAMES = {value: name for name, value in MP_STATES.items()}

# APIC delivery modes (ICR bits 10:8, MSI data bits 10:8).
DELIVERY_MODES = {"fixed": 0, "lowest": 1, "smi": 2, "nmi": 4, "init": 5, "sipi": 6, "extint": 7}
SHORTHANDS = {"none": 0, "self": 1, "all": 2, "all-but-self": 3}

SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SEGMENT_FIELDS = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "avl")
TABLES = ("gdt", "idt")
REGISTER_FIELDS = ("rip", "rflags", "rdx")
EVENT_FIELDS = ("events.sipi_vector", "events.latched_init", "events.smm")

# What an observation can read, in the order a VMM reads it unless the trace says otherwise.
READS = ("mp_state", "regs", "sregs", "events")
DEFAULT_READ = ("mp_state", "regs", "sregs")


def fields_of_read(read: str) -> tuple[str, ...]:
    """The comparable field names one read produces."""
    if read == "mp_state":
        return ("mp_state",)
    if read == "regs":
        return REGISTER_FIELDS
    if read == "sregs":
        segs = tuple(f"{s}.{f}" for s in SEGMENTS for f in SEGMENT_FIELDS)
        tables = tuple(f"{t}.{f}" for t in TABLES for f in ("base", "limit"))
        return segs + tables + ("cr0",)
    if read == "events":
        return EVENT_FIELDS
    raise ValueError(read)


ALL_FIELDS = frozenset(f for r in READS for f in fields_of_read(r))


@dataclass(frozen=True)
class Setup:
    vcpus: int = 2
    apic: str = "xapic"  # "xapic" | "x2apic"
    irqchip: str = "kernel"  # "kernel" | "split"
    guest: str = "none"  # "none" | "stepper" | "smp-boot"
    sync_apic_map: bool = True  # KVM_SET_LAPIC on every vCPU after creating all of them


@dataclass(frozen=True)
class Step:
    line: int

    kind = "step"


@dataclass(frozen=True)
class Msi(Step):
    """KVM_SIGNAL_MSI from the host; the ioctl's return value is compared."""

    address_lo: int
    address_hi: int
    data: int
    kind = "msi"


@dataclass(frozen=True)
class Icr(Step):
    """The guest on `vcpu` writes its ICR (xAPIC MMIO or x2APIC MSR 0x830, per setup.apic)."""

    vcpu: int
    value: int  # 64 bits: destination in the high half (xAPIC: bits 63:56)
    kind = "icr"


@dataclass(frozen=True)
class Observe(Step):
    vcpus: tuple
    read: tuple = DEFAULT_READ
    fields: frozenset | None = None  # None: every field the reads produce
    expect: dict = field(default_factory=dict)  # vcpu -> {field: value}, pins the model
    kind = "observe"


@dataclass(frozen=True)
class GetMpState(Step):
    vcpu: int
    kind = "get_mp_state"


@dataclass(frozen=True)
class SetMpState(Step):
    vcpu: int
    state: int
    kind = "set_mp_state"


@dataclass(frozen=True)
class SetVcpuEvents(Step):
    vcpu: int
    sipi_vector: int | None = None
    latched_init: int | None = None
    smm: int | None = None
    kind = "set_vcpu_events"


@dataclass(frozen=True)
class SetLapic(Step):
    """KVM_SET_LAPIC with the vCPU's own state: re-enrols every vCPU in the APIC map."""

    vcpu: int
    kind = "set_lapic"


@dataclass(frozen=True)
class Smi(Step):
    vcpu: int
    kind = "smi"


@dataclass(frozen=True)
class Nmi(Step):
    vcpu: int
    kind = "nmi"


@dataclass(frozen=True)
class GuestCommand(Step):
    """A stepper command run by the guest on `vcpu`: start, hlt, x2apic, spin."""

    vcpu: int
    command: str
    argument: int = 0
    kind = "guest"


@dataclass(frozen=True)
class SmpBoot(Step):
    """The smp image's BSP brings up every AP by itself, every vCPU on its own thread."""

    broadcast: bool = False  # INIT + SIPI to all-but-self, else INIT-SIPI-SIPI per APIC ID
    vector: int = 0x10
    kind = "smp_boot"


@dataclass(frozen=True)
class Branch:
    thread: str  # "host" or "vcpuN"
    steps: tuple


@dataclass(frozen=True)
class Concurrently(Step):
    branches: tuple
    kind = "concurrently"


@dataclass(frozen=True)
class Trace:
    name: str
    path: str
    line: int
    setup: Setup
    steps: tuple
    description: str = ""
    rules: tuple = ()
    tags: tuple = ()
    profiles: tuple = ()  # empty: every profile
    requires: tuple = ()  # host capabilities: "smm", "x2apic", "split-irqchip"
    pinned_profiles: tuple = ("mainline",)  # profiles under which observe.expect pins apply

    def applies_to(self, profile: str) -> bool:
        return not self.profiles or profile in self.profiles

    def location(self, step: Step) -> str:
        return f"{self.path}:{step.line}"
