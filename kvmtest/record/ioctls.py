"""The KVM ioctls the recorder decodes: request numbers (the kernel's _IOC encoding) and how
their arguments and results are read with the construct layouts of kvmtest.kvm.layouts.

A request is `dir << 30 | size << 16 | type << 8 | nr` (include/uapi/asm-generic/ioctl.h);
every KVM ioctl has type KVMIO = 0xAE, which is what the seccomp filter matches.
"""

from __future__ import annotations

from typing import NamedTuple

from kvmtest.kvm import layouts as L

KVMIO = 0xAE
_NONE, _WRITE, _READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int = 0) -> int:
    return direction << 30 | size << 16 | KVMIO << 8 | nr


class Ioctl(NamedTuple):
    name: str
    request: int
    scope: str  # "system" (/dev/kvm), "vm" or "vcpu"
    layout: object = None  # construct Struct of the argument, if it points to one
    reads: bool = False  # the kernel writes the struct: decode it at syscall exit
    writes: bool = False  # userspace passes the struct: decode it at syscall entry


def _table() -> dict[int, Ioctl]:
    io = [
        Ioctl("KVM_CREATE_VM", _ioc(_NONE, 0x01), "system"),
        Ioctl("KVM_CREATE_VCPU", _ioc(_NONE, 0x41), "vm"),
        Ioctl("KVM_CREATE_IRQCHIP", _ioc(_NONE, 0x60), "vm"),
        Ioctl("KVM_RUN", _ioc(_NONE, 0x80), "vcpu"),
        Ioctl("KVM_NMI", _ioc(_NONE, 0x9A), "vcpu"),
        Ioctl("KVM_SMI", _ioc(_NONE, 0xB7), "vcpu"),
    ]
    structs = [
        ("KVM_GET_REGS", _READ, 0x81, L.kvm_regs, "vcpu"),
        ("KVM_SET_REGS", _WRITE, 0x82, L.kvm_regs, "vcpu"),
        ("KVM_GET_SREGS", _READ, 0x83, L.kvm_sregs, "vcpu"),
        ("KVM_SET_SREGS", _WRITE, 0x84, L.kvm_sregs, "vcpu"),
        ("KVM_GET_SREGS2", _READ, 0xCC, L.kvm_sregs2, "vcpu"),
        ("KVM_SET_SREGS2", _WRITE, 0xCD, L.kvm_sregs2, "vcpu"),
        ("KVM_GET_MSRS", _READ | _WRITE, 0x88, L.kvm_msrs, "vcpu"),
        ("KVM_SET_MSRS", _WRITE, 0x89, L.kvm_msrs, "vcpu"),
        ("KVM_GET_LAPIC", _READ, 0x8E, L.kvm_lapic_state, "vcpu"),
        ("KVM_SET_LAPIC", _WRITE, 0x8F, L.kvm_lapic_state, "vcpu"),
        ("KVM_GET_MP_STATE", _READ, 0x98, L.kvm_mp_state, "vcpu"),
        ("KVM_SET_MP_STATE", _WRITE, 0x99, L.kvm_mp_state, "vcpu"),
        ("KVM_GET_VCPU_EVENTS", _READ, 0x9F, L.kvm_vcpu_events, "vcpu"),
        ("KVM_SET_VCPU_EVENTS", _WRITE, 0xA0, L.kvm_vcpu_events, "vcpu"),
        ("KVM_SIGNAL_MSI", _WRITE, 0xA5, L.kvm_msi, "vm"),
    ]
    for name, direction, nr, layout, scope in structs:
        size = 8 if layout is L.kvm_msrs else layout.sizeof()
        io.append(
            Ioctl(
                name,
                _ioc(direction, nr, size),
                scope,
                layout,
                reads=bool(direction & _READ),
                writes=bool(direction & _WRITE),
            )
        )
    # KVM_ENABLE_CAP (struct kvm_enable_cap, 104 bytes): the cap number is its first u32.
    io.append(Ioctl("KVM_ENABLE_CAP", _ioc(_WRITE, 0xA3, 104), "vm", writes=True))
    return {i.request: i for i in io}


IOCTLS = _table()
BY_NAME = {i.name: i for i in IOCTLS.values()}
KVM_RUN = BY_NAME["KVM_RUN"].request
KVM_CAP_SPLIT_IRQCHIP = 121
MSR_APIC_BASE = 0x1B
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2
KVM_VCPUEVENT_VALID_SMM = 0x8


# The ioctls a trace step stands for (kvmtest/record/convert.py); the others are only counted.
STEP_IOCTLS = {
    "KVM_RUN",
    "KVM_GET_MP_STATE",
    "KVM_SET_MP_STATE",
    "KVM_GET_REGS",
    "KVM_SET_REGS",
    "KVM_GET_SREGS",
    "KVM_SET_SREGS",
    "KVM_GET_SREGS2",
    "KVM_SET_SREGS2",
    "KVM_GET_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS",
    "KVM_GET_LAPIC",
    "KVM_SET_LAPIC",
    "KVM_GET_MSRS",
    "KVM_SET_MSRS",
    "KVM_SIGNAL_MSI",
    "KVM_SMI",
    "KVM_NMI",
}


def name_of(request: int) -> str:
    known = IOCTLS.get(request)
    if known is not None:
        return known.name
    return f"KVM_IOCTL_{request >> 30 & 3}_{request >> 16 & 0x3FFF:#x}_{request & 0xFF:#04x}"


def argument_size(ioctl: Ioctl, head: bytes | None = None) -> int:
    """Bytes to read at the argument pointer: the struct; for kvm_msrs the header says how
    many 16-byte entries follow."""
    if ioctl.layout is L.kvm_msrs:
        if head is None:
            return 8
        return 8 + 16 * min(int.from_bytes(head[:4], "little"), 256)
    if ioctl.name == "KVM_ENABLE_CAP":
        return 104
    return ioctl.layout.sizeof()


def decode(ioctl: Ioctl, data: bytes):
    """The argument struct as a construct Container (KVM_ENABLE_CAP: {cap})."""
    if ioctl.name == "KVM_ENABLE_CAP":
        return {"cap": int.from_bytes(data[:4], "little")}
    return ioctl.layout.parse(data)
