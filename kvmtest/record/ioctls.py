"""The KVM ioctls the recorder decodes: request numbers (the kernel's _IOC encoding) and how
their arguments and results are read with the construct layouts of kvmtest.kvm.layouts.

A request is `dir << 30 | size << 16 | type << 8 | nr` (include/uapi/asm-generic/ioctl.h);
every KVM ioctl has type KVMIO = 0xAE, which is what the seccomp filter matches. The size in
the request is the struct's size in the kernel's uapi headers; tests/record checks that each
layout has that size. The layouts (construct) are imported only when a struct is decoded, after
the VMM has exited: the recorder starts the VMM before anything heavy is imported.
"""

from __future__ import annotations

from typing import NamedTuple

KVMIO = 0xAE
_NONE, _WRITE, _READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int = 0) -> int:
    return direction << 30 | size << 16 | KVMIO << 8 | nr


class Ioctl(NamedTuple):
    name: str
    request: int
    scope: str  # "system" (/dev/kvm), "vm" or "vcpu"
    layout: str | None = None  # name of the construct Struct in kvmtest.kvm.layouts
    reads: bool = False  # the kernel writes the struct: decode it at syscall exit
    writes: bool = False  # userspace passes the struct: decode it at syscall entry

    @property
    def size(self) -> int:
        """The argument's size as the request encodes it (kvm_msrs: its 8-byte header)."""
        return self.request >> 16 & 0x3FFF


def _table() -> dict[int, Ioctl]:
    io = [
        Ioctl("KVM_CREATE_VM", _ioc(_NONE, 0x01), "system"),
        Ioctl("KVM_CREATE_VCPU", _ioc(_NONE, 0x41), "vm"),
        Ioctl("KVM_CREATE_IRQCHIP", _ioc(_NONE, 0x60), "vm"),
        Ioctl("KVM_RUN", _ioc(_NONE, 0x80), "vcpu"),
        Ioctl("KVM_NMI", _ioc(_NONE, 0x9A), "vcpu"),
        Ioctl("KVM_SMI", _ioc(_NONE, 0xB7), "vcpu"),
    ]
    structs = [  # name, direction, nr, layout, its size in the uapi headers, scope
        ("KVM_GET_REGS", _READ, 0x81, "kvm_regs", 144, "vcpu"),
        ("KVM_SET_REGS", _WRITE, 0x82, "kvm_regs", 144, "vcpu"),
        ("KVM_GET_SREGS", _READ, 0x83, "kvm_sregs", 312, "vcpu"),
        ("KVM_SET_SREGS", _WRITE, 0x84, "kvm_sregs", 312, "vcpu"),
        ("KVM_GET_SREGS2", _READ, 0xCC, "kvm_sregs2", 320, "vcpu"),
        ("KVM_SET_SREGS2", _WRITE, 0xCD, "kvm_sregs2", 320, "vcpu"),
        ("KVM_GET_MSRS", _READ | _WRITE, 0x88, "kvm_msrs", 8, "vcpu"),
        ("KVM_SET_MSRS", _WRITE, 0x89, "kvm_msrs", 8, "vcpu"),
        ("KVM_GET_LAPIC", _READ, 0x8E, "kvm_lapic_state", 1024, "vcpu"),
        ("KVM_SET_LAPIC", _WRITE, 0x8F, "kvm_lapic_state", 1024, "vcpu"),
        ("KVM_GET_MP_STATE", _READ, 0x98, "kvm_mp_state", 4, "vcpu"),
        ("KVM_SET_MP_STATE", _WRITE, 0x99, "kvm_mp_state", 4, "vcpu"),
        ("KVM_GET_VCPU_EVENTS", _READ, 0x9F, "kvm_vcpu_events", 64, "vcpu"),
        ("KVM_SET_VCPU_EVENTS", _WRITE, 0xA0, "kvm_vcpu_events", 64, "vcpu"),
        ("KVM_SIGNAL_MSI", _WRITE, 0xA5, "kvm_msi", 32, "vm"),
    ]
    for name, direction, nr, layout, size, scope in structs:
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


# The ioctls a trace step stands for (kvmtest/record/convert.py).
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

# The GET ioctls by the `observe` read that stands for them (docs/traces.md, observe).
READS = {
    "KVM_GET_MP_STATE": "mp_state",
    "KVM_GET_REGS": "regs",
    "KVM_GET_SREGS": "sregs",
    "KVM_GET_SREGS2": "sregs",
    "KVM_GET_VCPU_EVENTS": "events",
    "KVM_GET_LAPIC": "lapic",
    "KVM_GET_MSRS": "msrs",
}

# The ioctls the recorder stops at without --all-ioctls: the steps' (KVM_RUN aside: its
# returns are inferred, tracer.py) and the ones that say which fd is which VM or vCPU, and
# whether a VM's irqchip is split. Every other KVM ioctl runs without a stop.
RECORDED = sorted(
    BY_NAME[name].request
    for name in (STEP_IOCTLS - {"KVM_RUN"}) | {"KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_ENABLE_CAP"}
)


def name_of(request: int) -> str:
    known = IOCTLS.get(request)
    if known is not None:
        return known.name
    return f"KVM_IOCTL_{request >> 30 & 3}_{request >> 16 & 0x3FFF:#x}_{request & 0xFF:#04x}"


def argument_size(ioctl: Ioctl, head: bytes | None = None) -> int:
    """Bytes to read at the argument pointer: the struct; for kvm_msrs the header says how
    many 16-byte entries follow."""
    if ioctl.layout == "kvm_msrs" and head is not None:
        return 8 + 16 * min(int.from_bytes(head[:4], "little"), 256)
    return ioctl.size


def layout_of(ioctl: Ioctl):
    from kvmtest.kvm import layouts

    return getattr(layouts, ioctl.layout)


def decode(ioctl: Ioctl, data: bytes):
    """The argument struct as a construct Container (KVM_ENABLE_CAP: {cap})."""
    if ioctl.name == "KVM_ENABLE_CAP":
        return {"cap": int.from_bytes(data[:4], "little")}
    return layout_of(ioctl).parse(data)
