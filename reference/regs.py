"""Register images after RESET, INIT and SIPI (section c of docs/semantics.md).

A vCPU's register file is a dict: ``rip``, ``rflags``, ``rdx``, ``cr0``, the eight segment
registers (``Segment``) and ``gdt``/``idt`` (``DTable``). A value is an int, or ``GUEST`` when
the guest ran code since the last reset (the model does not know it; comparisons skip it).
Segments and descriptor tables hold GUEST field by field. A value the reset does not write is
*kept*: copied from the old file, so "left as the last write made it" and "reset" stay distinct
(and a kept GUEST stays GUEST).

Flavours differ only in the segment types KVM_GET_SREGS reports (quirk d.7.13, table c.2);
``pvm`` is this host's kvm_pvm, which reports the VMX types (docs/host-findings.md#backend).
Fields docs/semantics.md does not give (db, l, g, avl; LDTR/TR selectors and bases) are
UNVERIFIED: 0 is
what both vendors' reset code would leave, and the kvm backend will be compared against it.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple


class Unknown:
    """A value the model does not give, as a named singleton compared by identity: GUEST ("the
    guest owns this value now") here, UNSPECIFIED ("the manuals leave it open") in
    architecture.py. Never compared; copies and pickles stay the same object."""

    _by_name: dict = {}

    def __new__(cls, name: str):
        if name not in cls._by_name:
            marker = super().__new__(cls)
            marker.name = name
            cls._by_name[name] = marker
        return cls._by_name[name]

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self):
        return (Unknown, (self.name,))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


GUEST = Unknown("GUEST")


class Segment(NamedTuple):
    selector: int
    base: int
    limit: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 - the kvm_segment field name
    g: int
    avl: int


class DTable(NamedTuple):
    base: int
    limit: int


SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
DTABLES = ("gdt", "idt")
GPRS = ("rip", "rflags", "rdx")
# Everything the guest can change by running code (design.md: these become GUEST).
GUEST_OWNED = GPRS + ("cr0",) + SEGMENTS + DTABLES

CR0_PE = 0x1
CR0_ET = 0x10
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_RESET = CR0_CD | CR0_NW | CR0_ET  # 0x60000010
RDX_DEFAULT = 0x600
# The architectural reset vector: CS F000 based at FFFF0000, RIP FFF0 (c.1).
RESET_CS_SELECTOR, RESET_CS_BASE, RESET_RIP = 0xF000, 0xFFFF0000, 0xFFF0

# Table c.2: reported types of CS, SS and TR per flavour (quirk d.7.13).
SEGMENT_TYPES = {
    "vmx": {"cs": 0xB, "ss": 0x3, "tr": 0xB},
    "svm": {"cs": 0xA, "ss": 0x2, "tr": 0x3},
    "pvm": {"cs": 0xB, "ss": 0x3, "tr": 0xB},  # host-findings.md#backend: VMX-like types
}


def _data(type_: int) -> Segment:
    return Segment(0, 0, 0xFFFF, type_, 1, 0, 0, 1, 0, 0, 0)


def _segments(flavour: str, cs_selector: int, cs_base: int) -> dict:
    """Table c.2 (same layout in V2, c.3); db/l/g/avl = 0 UNVERIFIED. A fresh dict."""
    return dict(_segments_cached(flavour, cs_selector, cs_base))


@cache
def _segments_cached(flavour: str, cs_selector: int, cs_base: int) -> dict:
    t = SEGMENT_TYPES[flavour]
    return {
        "cs": Segment(cs_selector, cs_base, 0xFFFF, t["cs"], 1, 0, 0, 1, 0, 0, 0),
        "ds": _data(3),
        "es": _data(3),
        "fs": _data(3),
        "gs": _data(3),
        "ss": _data(t["ss"]),
        "tr": Segment(0, 0, 0xFFFF, t["tr"], 1, 0, 0, 0, 0, 0, 0),  # selector/base UNVERIFIED
        "ldt": Segment(0, 0, 0xFFFF, 0x2, 1, 0, 0, 0, 0, 0, 0),  # selector/base UNVERIFIED
    }


def _svm(flavour: str) -> bool:
    return flavour == "svm"


def reset_image(image: str, flavour: str, *, bsp: bool, common: bool = True) -> dict:
    """The image at vCPU creation (RESET). ``image`` is the profile's image generation;
    ``common`` (V3 only) whether common code writes it (kvm_vcpu_reset, 5.15) or each
    vendor's reset does (c.5)."""
    return dict(_reset_image(image, flavour, bsp, common))


@cache
def _reset_image(image: str, flavour: str, bsp: bool, common: bool = True) -> dict:
    if image == "v1":
        # c.4: V1 runs the vendor reset with sipi_vector 0 at creation, so an AP starts at
        # CS 0 / base 0 / RIP 0 (inferred in docs/semantics.md#c4, UNVERIFIED).
        return v1_sipi_image(flavour, None, bsp=bsp, vector=0, cpuid_1_eax=None)
    if image == "v2":
        return v2_image(flavour, None, cpuid_1_eax=None)
    regs = _segments(flavour, 0xF000, 0xFFFF0000)  # c.1/c.2
    # c.1: at RESET there is never a CPUID table, so 0x600; c.5: before 5.15 SVM's reset
    # wrote kvm_cpuid(1).eax, which is 0 without a table.
    rdx = RDX_DEFAULT if common or not _svm(flavour) else 0
    regs.update(
        rip=0xFFF0,
        rflags=0x2,
        rdx=rdx,
        cr0=CR0_RESET,
        gdt=DTable(0, 0xFFFF),
        idt=DTable(0, 0xFFFF),
    )
    return regs


def init_image(
    image: str, flavour: str, old: dict, *, cpuid_1_eax: int | None, common: bool = True
) -> dict:
    """The image an INIT leaves (rule 10), V2 and V3 (V1 does not reset on INIT); ``common``
    as for reset_image."""
    if image == "v2":
        return v2_image(flavour, old, cpuid_1_eax=cpuid_1_eax)
    if not common:
        return vendor_init_image(flavour, old, cpuid_1_eax=cpuid_1_eax)
    regs = _segments(flavour, 0xF000, 0xFFFF0000)
    old_cr0 = old["cr0"]
    if old_cr0 is GUEST:
        cr0 = GUEST  # d.7.10: CD/NW kept from a value the model does not know
    else:
        cr0 = CR0_ET | (old_cr0 & (CR0_CD | CR0_NW))  # d.7.10
    regs.update(
        rip=0xFFF0,
        rflags=0x2,
        rdx=RDX_DEFAULT if cpuid_1_eax is None else cpuid_1_eax,  # d.7.11
        cr0=cr0,
        gdt=DTable(0, 0xFFFF),
        idt=DTable(0, 0xFFFF),
    )
    return regs


def vendor_init_image(flavour: str, old: dict, *, cpuid_1_eax: int | None) -> dict:
    """c.5: V3 before 5.15, where each vendor's reset wrote the INIT image (vmx_vcpu_reset,
    svm_vcpu_reset + init_vmcb): the c.2 segments, CR0 = 0x60000010 on every INIT; VMX RDX =
    get_rdx_init_val() (0x600), GDTR/IDTR base 0; SVM RDX = kvm_cpuid(1).eax (0 without a
    CPUID table), GDTR/IDTR limit 0xffff with the base left as it was."""
    regs = _segments(flavour, 0xF000, 0xFFFF0000)
    if _svm(flavour):
        rdx = 0 if cpuid_1_eax is None else cpuid_1_eax
        gdt, idt = _kept_base(old, "gdt"), _kept_base(old, "idt")
    else:
        rdx, gdt, idt = RDX_DEFAULT, DTable(0, 0xFFFF), DTable(0, 0xFFFF)
    regs.update(rip=0xFFF0, rflags=0x2, rdx=rdx, cr0=CR0_RESET, gdt=gdt, idt=idt)
    return regs


def _kept_base(old: dict | None, name: str):
    """A descriptor table whose limit is reset but whose base is left as it was."""
    if old is None:
        return DTable(0, 0xFFFF)
    return DTable(old[name].base, 0xFFFF)


def v2_image(flavour: str, old: dict | None, *, cpuid_1_eax: int | None) -> dict:
    """c.3: Linux 3.10, where INIT and RESET ran the same sequence."""
    if _svm(flavour):
        regs = _segments(flavour, 0xF000, 0xF0000)  # c.3: init_vmcb CS base 0xf0000
        # c.3: SVM RDX = kvm_cpuid(1).eax; with no CPUID table kvm_cpuid yields 0 (UNVERIFIED).
        rdx = 0 if cpuid_1_eax is None else cpuid_1_eax
        # c.3: GDTR/IDTR base not reset by SVM INIT in 3.10 (UNVERIFIED): kept.
        gdt = _kept_base(old, "gdt")
        idt = _kept_base(old, "idt")
    else:
        # c.3: at 66450a21 only seg_setup ran for CS, base 0 (0xffff0000 came by about 3.11,
        # commit UNVERIFIED); RDX = get_rdx_init_val() = 0x600.
        regs = _segments(flavour, 0xF000, 0)
        rdx = RDX_DEFAULT
        gdt = DTable(0, 0xFFFF)
        idt = DTable(0, 0xFFFF)
    regs.update(rip=0xFFF0, rflags=0x2, rdx=rdx, cr0=CR0_RESET, gdt=gdt, idt=idt)  # d.7.10
    return regs


def v1_sipi_image(
    flavour: str, old: dict | None, *, bsp: bool, vector: int, cpuid_1_eax: int | None
) -> dict:
    """c.4: Linux 3.9 resets when KVM_RUN finds SIPI_RECEIVED; the AP's CS comes from the
    vector, the BSP ignores it (CS 0xf000, RIP 0xfff0; VMX base 0 from seg_setup)."""
    regs = v2_image(flavour, old, cpuid_1_eax=cpuid_1_eax)
    if not bsp:
        regs["cs"] = regs["cs"]._replace(selector=vector << 8, base=vector << 12)
        regs["rip"] = 0
    return regs


def sipi_fixup(regs: dict, vector: int) -> None:
    """Rule 13: CS.selector = v << 8, CS.base = v << 12, RIP = 0; nothing else changes
    (fields the guest owned stay GUEST)."""
    regs["cs"] = regs["cs"]._replace(selector=(vector << 8) & 0xFFFF, base=vector << 12)
    regs["rip"] = 0


GUEST_SEGMENT = Segment(*(GUEST,) * len(Segment._fields))
GUEST_DTABLE = DTable(GUEST, GUEST)


def guest_ran(regs: dict) -> None:
    """design.md: the guest executed code, so every value it owns is GUEST (field by field, so
    that a later partial write, such as the SIPI fix-up, leaves the other fields GUEST)."""
    for name in GPRS:
        regs[name] = GUEST
    regs["cr0"] = GUEST
    for name in SEGMENTS:
        regs[name] = GUEST_SEGMENT
    for name in DTABLES:
        regs[name] = GUEST_DTABLE


def segment_dict(seg: Segment) -> dict:
    """KVM_GET_SREGS form of one segment."""
    return seg._asdict()


def dtable_dict(dt: DTable) -> dict:
    return dt._asdict()
