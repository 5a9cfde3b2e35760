"""Binary layouts of the KVM structures, declared with construct.

cffi knows these structures inside this process (it compiles against <linux/kvm.h>); construct
describes the same bytes where they come from elsewhere: another process's memory read by the
recorder, a saved snapshot, a trace that sets a whole LAPIC page. tests/kvm/test_layouts.py
compiles a C program against <linux/kvm.h> that prints the size and every field offset, and
checks them against these declarations, so the two views cannot drift apart.

Every structure is little-endian x86-64. Names are the kernel's.
"""

from __future__ import annotations

from construct import (
    Array,
    Bytes,
    Int8ul,
    Int16sl,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Struct,
    this,
)

u8, u16, u32, u64 = Int8ul, Int16ul, Int32ul, Int64ul

kvm_regs = Struct(
    *(
        name / u64
        for name in (
            "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
        )
    )
)

kvm_segment = Struct(
    "base" / u64,
    "limit" / u32,
    "selector" / u16,
    "type" / u8,
    "present" / u8,
    "dpl" / u8,
    "db" / u8,
    "s" / u8,
    "l" / u8,
    "g" / u8,
    "avl" / u8,
    "unusable" / u8,
    "padding" / u8,
)

kvm_dtable = Struct("base" / u64, "limit" / u16, "padding" / Array(3, u16))

SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
KVM_NR_INTERRUPTS = 256

kvm_sregs = Struct(
    *(name / kvm_segment for name in SEGMENTS),
    "gdt" / kvm_dtable,
    "idt" / kvm_dtable,
    *(name / u64 for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
    "interrupt_bitmap" / Array((KVM_NR_INTERRUPTS + 63) // 64, u64),
)

# KVM_GET_SREGS2 / KVM_SET_SREGS2 (what QEMU uses since 6.2): no interrupt bitmap, but flags
# and the PAE PDPTRs.
kvm_sregs2 = Struct(
    *(name / kvm_segment for name in SEGMENTS),
    "gdt" / kvm_dtable,
    "idt" / kvm_dtable,
    *(name / u64 for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
    "flags" / u64,
    "pdptrs" / Array(4, u64),
)

kvm_mp_state = Struct("mp_state" / u32)

kvm_vcpu_events = Struct(
    "exception"
    / Struct("injected" / u8, "nr" / u8, "has_error_code" / u8, "pending" / u8, "error_code" / u32),
    "interrupt" / Struct("injected" / u8, "nr" / u8, "soft" / u8, "shadow" / u8),
    "nmi" / Struct("injected" / u8, "pending" / u8, "masked" / u8, "pad" / u8),
    "sipi_vector" / u32,
    "flags" / u32,
    "smi" / Struct("smm" / u8, "pending" / u8, "smm_inside_nmi" / u8, "latched_init" / u8),
    "triple_fault" / Struct("pending" / u8),
    "reserved" / Array(26, u8),
    "exception_has_payload" / u8,
    "exception_payload" / u64,
)

kvm_msi = Struct(
    "address_lo" / u32,
    "address_hi" / u32,
    "data" / u32,
    "flags" / u32,
    "devid" / u32,
    "pad" / Array(12, u8),
)

kvm_msr_entry = Struct("index" / u32, "reserved" / u32, "data" / u64)
kvm_msrs = Struct("nmsrs" / u32, "pad" / u32, "entries" / Array(this.nmsrs, kvm_msr_entry))

kvm_cpuid_entry2 = Struct(
    *(name / u32 for name in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")),
    "padding" / Array(3, u32),
)
kvm_cpuid2 = Struct("nent" / u32, "padding" / u32, "entries" / Array(this.nent, kvm_cpuid_entry2))

kvm_userspace_memory_region = Struct(
    "slot" / u32,
    "flags" / u32,
    "guest_phys_addr" / u64,
    "memory_size" / u64,
    "userspace_addr" / u64,
)

# --- the local APIC register page (KVM_GET_LAPIC / KVM_SET_LAPIC) ---------------------------
# 1 KiB: the xAPIC MMIO page's first 1 KiB, each 32-bit register in a 16-byte slot
# (Intel SDM vol. 3, table "Local APIC Register Address Map"; arch/x86/kvm/lapic.h).

KVM_APIC_REG_SIZE = 0x400

LAPIC_REGISTERS = {
    "id": 0x20,
    "lvr": 0x30,
    "tpr": 0x80,
    "apr": 0x90,
    "ppr": 0xA0,
    "eoi": 0xB0,
    "rrr": 0xC0,
    "ldr": 0xD0,
    "dfr": 0xE0,
    "spiv": 0xF0,
    **{f"isr{i}": 0x100 + 0x10 * i for i in range(8)},
    **{f"tmr{i}": 0x180 + 0x10 * i for i in range(8)},
    **{f"irr{i}": 0x200 + 0x10 * i for i in range(8)},
    "esr": 0x280,
    "lvt_cmci": 0x2F0,
    "icr": 0x300,
    "icr2": 0x310,
    "lvt_timer": 0x320,
    "lvt_thermal": 0x330,
    "lvt_pmc": 0x340,
    "lvt_lint0": 0x350,
    "lvt_lint1": 0x360,
    "lvt_error": 0x370,
    "tmict": 0x380,
    "tmcct": 0x390,
    "tdcr": 0x3E0,
}


def _lapic_page() -> Struct:
    """Every 16-byte slot as one named 32-bit register (reserved slots as `reserved_XXX`) and
    12 bytes of padding; parse and build are exact for the registers."""
    names = {offset: name for name, offset in LAPIC_REGISTERS.items()}
    fields = []
    for offset in range(0, KVM_APIC_REG_SIZE, 0x10):
        fields.append(names.get(offset, f"reserved_{offset:03x}") / u32)
        fields.append(Padding(12))
    return Struct(*fields)


kvm_lapic_registers = _lapic_page()
kvm_lapic_state = Struct("regs" / Bytes(KVM_APIC_REG_SIZE))


def lapic_registers(page: bytes) -> dict:
    """The named registers of a KVM_GET_LAPIC page, {name: value} (reserved slots left out)."""
    parsed = kvm_lapic_registers.parse(page)
    return {name: parsed[name] for name in LAPIC_REGISTERS}


def with_lapic_registers(page: bytes, **values: int) -> bytes:
    """`page` with the given registers replaced, every other byte (padding too) kept."""
    out = bytearray(page)
    for name, value in values.items():
        offset = LAPIC_REGISTERS[name]
        out[offset : offset + 4] = u32.build(value & 0xFFFFFFFF)
    return bytes(out)


# KVM_GET_STATS_FD (Linux 5.14+): the header, then num_desc descriptors of
# sizeof(kvm_stats_desc) + name_size bytes each (a NUL-padded name follows each one).
kvm_stats_header = Struct(
    "flags" / u32,
    "name_size" / u32,
    "num_desc" / u32,
    "id_offset" / u32,
    "desc_offset" / u32,
    "data_offset" / u32,
)
kvm_stats_desc = Struct(
    "flags" / u32,
    "exponent" / Int16sl,
    "size" / u16,
    "offset" / u32,
    "bucket_size" / u32,
)

# The structures whose layout tests/kvm/test_layouts.py checks against <linux/kvm.h>.
STRUCTS = {
    "kvm_regs": kvm_regs,
    "kvm_segment": kvm_segment,
    "kvm_dtable": kvm_dtable,
    "kvm_sregs": kvm_sregs,
    "kvm_sregs2": kvm_sregs2,
    "kvm_mp_state": kvm_mp_state,
    "kvm_vcpu_events": kvm_vcpu_events,
    "kvm_msi": kvm_msi,
    "kvm_msr_entry": kvm_msr_entry,
    "kvm_cpuid_entry2": kvm_cpuid_entry2,
    "kvm_userspace_memory_region": kvm_userspace_memory_region,
    "kvm_lapic_state": kvm_lapic_state,
    "kvm_stats_header": kvm_stats_header,
    "kvm_stats_desc": kvm_stats_desc,
}
