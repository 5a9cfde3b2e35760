"""Operations: the one vocabulary that traces, the simulated system and real KVM share.

A trace is a setup (how the VM is built) and a list of operations. Each operation is a frozen
record that names the thread performing it (``thread``: "host" or "vcpuN"); it can be built in
code, loaded from YAML (kvmtest/trace/load.py, which also records its ``line`` so a mismatch
is reported as file:line) and dumped back (kvmtest/trace/dump.py). The location is not part of
an operation's identity: two operations that do the same thing are equal wherever they were
written. docs/traces.md is the user-facing description; keep the two in step.
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
# LAPIC registers a trace can set and read (KVM_SET_LAPIC / KVM_GET_LAPIC), as the register
# page holds them: `id` has the xAPIC ID in bits 31:24 (and so has an x2APIC ID, unless the VM
# enabled KVM_X2APIC_API_USE_32BIT_IDS).
LAPIC_REGISTERS = ("id", "ldr", "dfr", "spiv")
LAPIC_FIELDS = tuple(f"lapic.{name}" for name in LAPIC_REGISTERS)
# MSRs a trace can set and read (KVM_SET_MSRS / KVM_GET_MSRS), by name -> index.
MSRS = {"apic_base": 0x1B}
MSR_FIELDS = tuple(f"msr.{name}" for name in MSRS)
SEGMENT_FIELD_BITS = {
    "selector": 16, "base": 64, "limit": 32, "type": 4, "present": 1, "dpl": 2,
    "db": 1, "s": 1, "l": 1, "g": 1, "avl": 1,
}  # fmt: skip

# Operations a concurrent block may contain: what the explorer and the kvm side both run
# (guest commands by their command name).
BLOCK_OPS = (
    "icr",
    "hlt",
    "spin",
    "report",
    "x2apic",
    "start",
    "msi",
    "set_mp_state",
    "get_mp_state",
)

# What an observation can read, in the order a VMM reads it unless the trace says otherwise.
READS = ("mp_state", "regs", "sregs", "events", "lapic", "msrs")
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
    if read == "lapic":
        return LAPIC_FIELDS
    if read == "msrs":
        return MSR_FIELDS
    raise ValueError(read)


# What set_sregs can change: every field a `sregs` read produces, by the same names.
SREGS_FIELDS = fields_of_read("sregs")


def field_bits(name: str) -> int:
    """Width of a settable register field ("cs.type": 4, "gdt.limit": 16, "cr0": 64)."""
    if name in ("cr0", "rip", "rflags", "rdx"):
        return 64
    table, _, part = name.partition(".")
    if table in TABLES:
        return 64 if part == "base" else 16
    return SEGMENT_FIELD_BITS[part]


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
    """Base of every operation. ``line``: where it was written (None when built in code).
    ``at`` and ``tid``: when and by which OS thread a recorded VMM did it (seconds since the
    recording started, the thread's id; `kvmtest record`), None otherwise; ``result``: what
    the recorded ioctl returned (0, a count, or -errno). Like ``line`` they are annotations,
    not part of an operation's identity."""

    line: int | None = field(default=None, kw_only=True, compare=False)
    at: float | None = field(default=None, kw_only=True, compare=False)
    tid: int | None = field(default=None, kw_only=True, compare=False)
    result: int | None = field(default=None, kw_only=True, compare=False)

    kind = "step"

    @property
    def thread(self) -> str:
        """Who performs it: host ioctls are the VMM's thread ("host")."""
        return "host"


class _OnVcpuThread:
    """Mixin: a guest instruction or command, performed by the vCPU's own thread."""

    @property
    def thread(self) -> str:
        return f"vcpu{self.vcpu}"


@dataclass(frozen=True)
class Msi(Step):
    """KVM_SIGNAL_MSI from the host; the ioctl's return value is compared."""

    address_lo: int
    address_hi: int
    data: int
    kind = "msi"


@dataclass(frozen=True)
class Icr(_OnVcpuThread, Step):
    """The guest on `vcpu` writes its ICR (x2APIC MSR 0x830 when that vCPU is in x2APIC
    mode now, else xAPIC MMIO: the stepper checks APIC_BASE.EXTD before each write)."""

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

    def keeps(self, name: str) -> bool:
        """Whether field `name` of a read is part of this observation."""
        return self.fields is None or name in self.fields


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
    """KVM_GET_LAPIC, the given registers replaced (none: the vCPU's own state), KVM_SET_LAPIC;
    it re-enrols every vCPU in the APIC map either way."""

    vcpu: int
    registers: tuple = ()  # ((name, value), ...) in LAPIC_REGISTERS order
    kind = "set_lapic"


@dataclass(frozen=True)
class SetRegs(Step):
    """KVM_GET_REGS, the given registers replaced, KVM_SET_REGS."""

    vcpu: int
    values: tuple  # ((name, value), ...) in REGISTER_FIELDS order
    kind = "set_regs"


@dataclass(frozen=True)
class SetSregs(Step):
    """KVM_GET_SREGS, the given fields ("cs.selector", "gdt.base", "cr0") replaced, SET_SREGS."""

    vcpu: int
    values: tuple  # ((name, value), ...) in SREGS_FIELDS order
    kind = "set_sregs"


@dataclass(frozen=True)
class SetMsrs(Step):
    """KVM_SET_MSRS of the named MSRs (IA32_APIC_BASE); result: how many KVM took."""

    vcpu: int
    values: tuple  # ((name, value), ...), names of MSRS
    kind = "set_msrs"


# A VMM's save: the GET ioctls per vCPU, in this order (KVM_GET_MP_STATE is a processing
# point, so it comes first, as QEMU's kvm_arch_get_registers has it).
SNAPSHOT_READS = ("mp_state", "regs", "sregs", "events", "lapic", "msrs")
# The SET ioctls a restore can issue, by the same names: KVM_SET_MP_STATE, _REGS, _SREGS,
# _VCPU_EVENTS, _LAPIC, KVM_SET_MSRS(IA32_APIC_BASE).
RESTORE_SETS = SNAPSHOT_READS


@dataclass(frozen=True)
class Snapshot(Step):
    """Save every vCPU's state with GET ioctls in SNAPSHOT_READS order (what a VMM saves for
    save/restore or live migration); what KVM_GET_MP_STATE returned is compared."""

    kind = "snapshot"


@dataclass(frozen=True)
class Restore(Step):
    """Build a fresh VM as the setup says and SET the last snapshot on it, vCPU by vCPU, the
    ioctls in ``order``; the trace continues on the new VM. ``mp_state`` replaces saved
    states ((vcpu, state), ...): a source that saved SIPI_RECEIVED (3.9, rule 25)."""

    order: tuple = RESTORE_SETS
    mp_state: tuple = ()  # ((vcpu, state), ...), by vCPU
    kind = "restore"

    def state_for(self, vcpu: int, saved: int) -> int:
        return dict(self.mp_state).get(vcpu, saved)


@dataclass(frozen=True)
class Smi(Step):
    vcpu: int
    kind = "smi"


@dataclass(frozen=True)
class Nmi(Step):
    vcpu: int
    kind = "nmi"


@dataclass(frozen=True)
class GuestRan(Step):
    """A recorded VMM's thread for `vcpu` was in KVM_RUN (traces with guest: none only).

    KVM processed whatever was pending there, as at any processing point (an INIT resets, a
    SIPI lands), and if the vCPU was then runnable its guest code ran: its registers are GUEST
    from here on. What that guest code did (an IPI it sent, a HLT) is not part of the trace;
    `kvmtest check` says which observations it can explain. The kvm side performs the
    processing point (KVM_GET_MP_STATE) and compares nothing."""

    vcpu: int
    kind = "guest_ran"


@dataclass(frozen=True)
class GuestCommand(_OnVcpuThread, Step):
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

    @property
    def thread(self) -> str:
        return "vcpu0"  # the BSP's code drives it; the APs react on their own threads


@dataclass(frozen=True)
class Branch:
    thread: str  # "host" or "vcpuN"
    steps: tuple


@dataclass(frozen=True)
class Concurrently(Step):
    """Branches that run at once, one thread each; the block's outcome is checked as a set."""

    branches: tuple
    kind = "concurrently"


@dataclass(frozen=True)
class Trace:
    """A named list of operations on a VM built as ``setup`` says. ``path`` and ``line`` say
    where it was loaded from; like an operation's line they are not part of its identity."""

    name: str
    setup: Setup
    steps: tuple
    description: str = ""
    rules: tuple = ()
    tags: tuple = ()
    profiles: tuple = ()  # empty: every profile
    requires: tuple = ()  # host capabilities: "smm", "x2apic", "split-irqchip"
    pinned_profiles: tuple = ("mainline",)  # profiles under which observe.expect pins apply
    # The concurrent block's outcome set, pinned per profile: ((profile, (label, ...)), ...).
    # The explorer's labels must equal it exactly (a model that allows too much, or too
    # little, fails), on either backend.
    outcomes: tuple = ()
    path: str = field(default="<code>", compare=False)
    line: int = field(default=1, compare=False)

    def pinned_outcomes(self, profile: str) -> frozenset | None:
        """The outcome labels pinned for `profile`, None when the trace pins none for it."""
        for name, labels in self.outcomes:
            if name == profile:
                return frozenset(labels)
        return None

    def applies_to(self, profile: str) -> bool:
        return not self.profiles or profile in self.profiles

    def location(self, step: Step) -> str:
        return f"{self.path}:{step.line}" if step.line is not None else self.path
