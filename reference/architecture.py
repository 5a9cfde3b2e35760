"""The architectural profiles ``sdm`` and ``apm``: what the CPU manuals say, not what KVM does.

The kernel profiles (``profiles.py``) say what a kernel's KVM does. The two profiles here say
what an Intel (SDM, vol. 3) or AMD (APM, vol. 2) processor does, so that a run under them
reports where KVM deviates from the manuals (``kvmtest run --profile sdm --findings``,
docs/findings.md).

*One architecture, vendor differences as switches.* An ``ArchProfile`` is a ``Profile`` whose
KVM switches are mainline's (they are the instrument: the ioctls through which the harness
drives and reads the vCPU) plus the *architectural switches* of ``ARCH_RULES``. Each
architectural switch is False in every kernel profile (KVM's behaviour) and True where a
manual says otherwise; the machine reads them through ``arch_value``. ``vendor`` picks which
manual's sections are cited and which fields that manual defines (``FIELDS``).

*Unspecified is not a value.* Whatever the manuals do not define is ``UNSPECIFIED``: never
compared and counted apart from ``GUEST`` (``not_compared_unspecified`` in the JSON report).
That covers every KVM-ABI-only result (ioctl return codes and KVM_SIGNAL_MSI counts, the
pending-event bookkeeping visible through GET_VCPU_EVENTS, ``mp_state`` values with no
architectural state such as SIPI_RECEIVED), registers read while KVM still holds an INIT or
SIPI pending (on a processor the signal would have been taken already; docs/semantics.md rule
8), and every later value of a vCPU an interrupt missed only because KVM's APIC map lacked it
(rule 33: whether the manual's delivery would have happened is left open, not guessed).
``mp_state`` UNINITIALIZED and INIT_RECEIVED are one architectural state, wait-for-SIPI
(``WAIT_FOR_SIPI`` equals either encoding).

Manual sections are cited by number and title (SDM: the numbering of the 2023+ editions,
where the APIC chapter is 11; older editions number it 10 and MP initialization 8). What the
manual says is paraphrased; ``unchecked`` marks where the text could not be read for this
module and the profile therefore leaves the point unspecified rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal, NamedTuple

from . import encodings as enc
from .profiles import ARCH, ARCHITECTURE_PROFILES, MAINLINE, Profile
from .regs import Unknown

UNSPECIFIED = Unknown("UNSPECIFIED")  # the manuals do not define this value; counted apart


class ArchState:
    """An architectural activity state that several ``mp_state`` encodings stand for."""

    def __init__(self, name: str, encodings: frozenset):
        self.name = name
        self.encodings = encodings

    def __eq__(self, other) -> bool:
        if isinstance(other, ArchState):
            return self.name == other.name
        return other in self.encodings

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


# UNINITIALIZED (1) after RESET, INIT_RECEIVED (2) after INIT: SDM 9.4.1 / 11.4.7.3, APM 16.5.
WAIT_FOR_SIPI = ArchState("wait-for-SIPI (UNINITIALIZED or INIT_RECEIVED)", frozenset({1, 2}))
# mp_state encodings with an architectural meaning of their own: RUNNABLE, HALTED.
ARCH_MP_STATES = frozenset({0, 3})


class Cite(NamedTuple):
    """A manual's section and what it says there, in our words."""

    section: str
    says: str


class ArchRule(NamedTuple):
    """One architectural switch: what the manuals say, what KVM does instead, and why it
    matters. ``kvm_rules`` cites docs/semantics.md; ``source`` is its kernel source trail."""

    switch: str
    title: str
    sdm: Cite | None
    apm: Cite | None
    kvm_does: str
    kvm_rules: str
    source: str
    guest_visible: str
    impact: Literal["harmless", "misbehaves", "security"]
    impact_why: str


IMPACTS = {
    "harmless": "harmless",
    "misbehaves": "a guest relying on the manual would misbehave",
    "security": "a security concern",
}

_WFS_SDM = "SDM vol. 3, 9.4.2 MP Initialization Protocol Requirements and Restrictions"
_ICR_SDM = "SDM vol. 3, 11.6.1 Interrupt Command Register (ICR)"
_IPI_APM = "APM vol. 2, 16.5 Interprocessor Interrupts (IPI)"
_INIT_TABLE_SDM = "SDM vol. 3, 9.1.1 Processor State After Reset (Table 9-1)"
_MODEL_SDM = "SDM vol. 3, 9.1.3 Model and Stepping Information"
_INIT_STATE_APM = "APM vol. 2, 14.1.3 Processor Initialization State (Table 14-1)"

ARCH_RULES: dict[str, ArchRule] = {
    r.switch: r
    for r in (
        ArchRule(
            "sipi_outside_wfs_ignored",
            "a SIPI to a vCPU that is not waiting for one does nothing, and does not end HLT",
            Cite(
                f"{_ICR_SDM}; {_WFS_SDM}",
                "a start-up IPI is recognised only by a processor in the wait-for-SIPI state;"
                " any other processor (running, halted) ignores it",
            ),
            Cite(
                _IPI_APM,
                "a startup IPI is acted on only by a processor that an INIT left waiting for"
                " it; others ignore it (unchecked: wording not read here)",
            ),
            "the SIPI is recorded as pending and kicks the target; a vCPU halted inside"
            " KVM_RUN wakes, processing drops the SIPI, and the vCPU resumes after its HLT",
            "rule 19, d.7.7 (docs/semantics.md#rule-19)",
            "__apic_accept_irq (APIC_DM_STARTUP: pending bit + kick) -> kvm_vcpu_has_events"
            " -> kvm_apic_has_pending_init_or_sipi (lapic.h) -> vcpu_block (x86.c: HALTED ->"
            " RUNNABLE whatever woke it) -> kvm_apic_accept_events (lapic.c: SIPI dropped"
            " outside INIT_RECEIVED)",
            "yes: the halted vCPU runs the instructions after its HLT",
            "misbehaves",
            "code that parks a processor with `cli; hlt` and no loop (firmware, crash or"
            " kexec paths) runs on into whatever follows when any SIPI reaches it, e.g. the"
            " second SIPI of INIT-SIPI-SIPI or a SIPI meant for another processor's restart;"
            " idle loops that re-check after HLT are not affected; the sender needs the ICR,"
            " so this stays inside the guest",
        ),
        ArchRule(
            "sipi_starts_reset_ap",
            "an AP fresh from RESET is waiting for a SIPI: a SIPI alone starts it",
            Cite(
                "SDM vol. 3, 9.4.1 BSP and AP Processors; " + _WFS_SDM,
                "after power-up or RESET the APs configure themselves and wait for a start-up"
                " signal (a SIPI) from the BSP",
            ),
            None,  # unchecked: the APM's wording on the post-RESET state was not read here
            "a vCPU in UNINITIALIZED drops a SIPI: only INIT_RECEIVED accepts one, so KVM"
            " needs an INIT before the first SIPI",
            "rule 12 (docs/semantics.md#rule-12)",
            "kvm_apic_accept_events (lapic.c: `if (vcpu->arch.mp_state =="
            " KVM_MP_STATE_INIT_RECEIVED)` before kvm_vcpu_deliver_sipi_vector)",
            "yes: the AP stays stopped instead of running at the vector",
            "harmless",
            "every OS and firmware follows the manuals' own INIT-SIPI-SIPI sequence, so the"
            " INIT comes first; only a guest that starts APs with a SIPI alone would find"
            " them dead",
        ),
        ArchRule(
            "first_sipi_wins",
            "the first SIPI ends wait-for-SIPI; a second SIPI finds a running AP and is ignored",
            Cite(
                f"{_WFS_SDM}; {_ICR_SDM}",
                "a SIPI moves the processor out of wait-for-SIPI and it starts at the SIPI's"
                " vector; SIPIs that arrive later are ignored (why the second SIPI of the MP"
                " protocol is harmless)",
            ),
            Cite(_IPI_APM, "as the SDM (unchecked: wording not read here)"),
            "SIPIs that arrive before the target's thread processes them overwrite the stored"
            " vector: the last vector wins",
            "rule 4 (docs/semantics.md#rule-4)",
            "__apic_accept_irq (APIC_DM_STARTUP: `apic->sipi_vector = vector` for every"
            " SIPI) -> kvm_apic_accept_events (lapic.c: one SIPI applied, with the last vector)",
            "yes: the AP starts at the last vector sent, not the first",
            "harmless",
            "guests send the same vector twice, so the winner does not matter; a guest that"
            " sends two different vectors would start at the wrong one",
        ),
        ArchRule(
            "reset_rdx_signature",
            "after RESET, EDX holds the processor's signature (as CPUID.01H:EAX)",
            Cite(
                f"{_MODEL_SDM}; {_INIT_TABLE_SDM}",
                "after power-up or RESET (and INIT) EDX holds the family, model and stepping,"
                " the same value CPUID leaf 1 returns in EAX",
            ),
            Cite(
                _INIT_STATE_APM,
                "EDX holds the processor's family, model and stepping after RESET and INIT",
            ),
            "a new vCPU has RDX = 0x600 whatever CPUID table the VMM sets afterwards (INIT"
            " does use CPUID.01H:EAX)",
            "c.1, d.7.11 (docs/semantics.md#c1)",
            "kvm_arch_vcpu_create -> kvm_vcpu_reset(vcpu, false) (x86.c: RDX from"
            " kvm_find_cpuid_entry(1), absent at creation, so 0x600); KVM_SET_CPUID2 does not"
            " update it",
            "yes: EDX at the reset vector (BIOS code reading its CPU signature there)",
            "harmless",
            "VMMs load the reset registers themselves (QEMU writes EDX from its CPUID model),"
            " so a guest only sees 0x600 under a VMM that relies on KVM's reset state",
        ),
        ArchRule(
            "manual_segment_types",
            "after RESET/INIT the data segments are present, read/write and accessed (type 3)",
            Cite(
                _INIT_TABLE_SDM,
                "DS, ES, FS, GS and SS: selector 0, base 0, limit FFFFh, access rights"
                " present, read/write, accessed",
            ),
            None,  # unchecked: the APM's attribute column was not read here
            "SVM reports SS with type 2 (not accessed) through KVM_GET_SREGS (VMX: 3)",
            "d.7.13, c.2 (docs/semantics.md#c2)",
            "init_vmcb -> init_seg (svm.c: no accessed bit); svm_get_segment adds it for"
            " DS/ES/FS/GS only",
            "hardly: the accessed bit of SS's hidden descriptor cache is not readable by the"
            " guest (only by the VMM through KVM_GET_SREGS, or a save through SMM/VMCB)",
            "harmless",
            "a VMM that copies the state elsewhere (migration to VMX) carries the difference",
        ),
    )
}

# Every field the harness compares, and which manual defines it: (SDM section, APM section),
# None where the manual does not (or, for the APM, where its text was not checked here).
# Fields absent from this table are unspecified under every architectural profile.
_SEG_BASIC = ("selector", "base", "limit", "present")
FIELDS: dict[str, tuple[str | None, str | None]] = {
    "mp_state": (_WFS_SDM, _IPI_APM),
    "report": ("the guest's own execution", "the guest's own execution"),
    "thread": ("the guest's own execution", "the guest's own execution"),
    "rip": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    "rflags": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    "rdx": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    # CR0 after INIT keeps CD and NW (SDM Table 9-1); the APM's INIT column was not checked.
    "cr0": (_INIT_TABLE_SDM, None),
    "gdt.base": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    "gdt.limit": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    "idt.base": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    "idt.limit": (_INIT_TABLE_SDM, _INIT_STATE_APM),
    **{
        f"{seg}.{name}": (_INIT_TABLE_SDM, _INIT_STATE_APM)
        for seg in ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr")
        for name in _SEG_BASIC
    },
    # "Present, R/W, Accessed" names one type for a data segment (3), none for CS (a code
    # segment is not writable; sandpile.org reads it as 93h, VMX needs a code type) and none
    # for the system segments LDTR and TR.
    **{f"{seg}.type": (_INIT_TABLE_SDM, None) for seg in ("ds", "es", "fs", "gs", "ss")},
    **{f"{seg}.s": (_INIT_TABLE_SDM, None) for seg in ("cs", "ds", "es", "fs", "gs", "ss")},
    "lapic.id": ("SDM vol. 3, 11.4.7.3 Local APIC State After an INIT Reset", None),
    "lapic.ldr": ("SDM vol. 3, 11.4.7.1 Local APIC State After Power-Up or Reset", None),
    "lapic.dfr": ("SDM vol. 3, 11.4.7.1 Local APIC State After Power-Up or Reset", None),
    "lapic.spiv": ("SDM vol. 3, 11.4.7.1 Local APIC State After Power-Up or Reset", None),
    "msr.apic_base": ("SDM vol. 3, 11.4.4 Local APIC Status and Location", None),
    "events.smm": ("SDM vol. 3, 32.3 System Management Mode Operation (in SMM or not)", None),
}
# The ID register's raw value in x2APIC mode depends on KVM_CAP_X2APIC_API: an ABI encoding.
X2APIC_ABI_FIELDS = frozenset({"lapic.id"})


def _arch_switch(manual_value: bool, rule: ArchRule | str):
    r = ARCH_RULES[rule]
    cites = "; ".join(c.section for c in (r.sdm, r.apm) if c is not None)
    return field(
        default=False,
        metadata={
            "layer": ARCH,
            "rule": r.kvm_rules,
            "doc": r.title,
            "manual": cites,
            "manual_value": manual_value,
        },
    )


@dataclass(frozen=True)
class ArchProfile(Profile):
    """A Profile that judges KVM by a CPU manual. The inherited switches are mainline's."""

    vendor: Literal["intel", "amd"] = "intel"
    kvm_base: str = "mainline"  # the kernel profile whose KVM switches the profile carries
    # --- architectural switches (ARCH_RULES); False is KVM's behaviour
    sipi_outside_wfs_ignored: bool = _arch_switch(True, "sipi_outside_wfs_ignored")
    sipi_starts_reset_ap: bool = _arch_switch(True, "sipi_starts_reset_ap")
    first_sipi_wins: bool = _arch_switch(True, "first_sipi_wins")
    reset_rdx_signature: bool = _arch_switch(True, "reset_rdx_signature")
    manual_segment_types: bool = _arch_switch(True, "manual_segment_types")

    def cite(self, switch: str) -> Cite | None:
        """The manual's section for an architectural switch (None: this manual does not say,
        so the switch is off in this profile)."""
        rule = ARCH_RULES[switch]
        return rule.sdm if self.vendor == "intel" else rule.apm


ARCH_SWITCHES = tuple(ARCH_RULES)


def _architecture(name: str, vendor: str, description: str) -> ArchProfile:
    base = {f.name: getattr(MAINLINE, f.name) for f in fields(Profile) if f.name != "changes"}
    base.update(name=name, description=description, releases=((0, 0), (0, 0)))
    p = ArchProfile(**base, vendor=vendor)
    # A switch is on where this vendor's manual says so; where it does not (or its text was
    # not checked), KVM's behaviour stands and the point is not reported.
    return replace(p, **{s: p.cite(s) is not None for s in ARCH_SWITCHES})


SDM = _architecture(
    "sdm",
    "intel",
    "Intel SDM vol. 3 (9.4 MP initialization, 11.6 IPIs): the architecture, not a kernel",
)
APM = _architecture(
    "apm",
    "amd",
    "AMD APM vol. 2 (14.1 initialization, 16 APIC): the architecture, not a kernel",
)
ARCHITECTURES: dict[str, ArchProfile] = {p.name: p for p in (SDM, APM)}
ARCHITECTURE_PROFILES.update(ARCHITECTURES)


def over_kernel(profile: ArchProfile, kernel: Profile) -> ArchProfile:
    """The architectural profile with the KVM switches of the kernel under test, so that a
    run inside another kernel reports the manual's deviations, not that kernel's differences
    from mainline (its ``changes`` from --set are kept)."""
    kvm = {f.name: getattr(kernel, f.name) for f in fields(Profile) if "layer" in f.metadata}
    return replace(profile, **kvm, kvm_base=kernel.name)


def is_architectural(profile) -> bool:
    return isinstance(profile, ArchProfile)


def arch_value(profile: Profile, switch: str) -> bool:
    """An architectural switch's value: the profile's, or KVM's (False) for a kernel profile."""
    return bool(getattr(profile, switch, False))


def kvm_variant(profile: ArchProfile, switches) -> ArchProfile:
    """The profile with the given architectural switches set back to KVM's behaviour: a
    mismatch that this variant predicts is explained by those switches."""
    return replace(profile, **{s: False for s in switches})


def field_cite(profile: ArchProfile, name: str) -> str | None:
    """The manual section that defines a compared field, or None (unspecified)."""
    row = FIELDS.get(name)
    if row is None:
        return None
    return row[0] if profile.vendor == "intel" else row[1]


def specified(profile: ArchProfile, name: str, x2apic: bool = False) -> bool:
    if x2apic and name in X2APIC_ABI_FIELDS:
        return False
    return field_cite(profile, name) is not None


def missed_by_map(machine, irq: enc.Irq, sender: int | None) -> frozenset[int]:
    """vCPUs an interrupt reaches under the manuals' destination rules (every present APIC
    that matches) but not through KVM's APIC map (rule 33: the newest vCPU is missing)."""
    src = machine.vcpus[sender] if sender is not None else None
    if irq.shorthand != enc.SH_NONE:
        return frozenset()
    fast = machine._fast_targets(src, irq)
    if fast is None:
        return frozenset()  # the slow path walks every vCPU: nobody is missed
    matched = {t.index for t in machine.vcpus if t.hw_enabled and machine._match(t, src, irq)}
    return frozenset(matched - {t.index for t in fast})
