"""The project's smp guest image as a QEMU `-bios`: a 64 KiB ROM that sets up what
kvmtest/guest/loader.py sets up on /dev/kvm, then runs the image.

QEMU maps a 64 KiB -bios at 0xf0000 and below 4 GiB and starts the BSP at the reset vector with
nothing in RAM. The wrapper (hand-assembled real-mode code at ROM offset 0x4000; the reset
vector jumps there) zeroes 0x0-0x3fff, copies smp.bin (kept at ROM offset 0) to 0x0 and the
landing page (ROM offset 0x3000) to the page of SIPI vector 0x10, writes the SMP parameters
(cpus, per-CPU INIT-SIPI-SIPI, vector 0x10, wait limit), loads FS with the image's own unreal-
mode descriptor based at the xAPIC page (the loader does that with KVM_SET_SREGS), and jumps to
ENTRY_BSP. The image's REPORT of the result writes PORT_REPORT (0xeb): with
`-device isa-debug-exit,iobase=0xeb,iosize=1` QEMU exits there by itself, with status
(REP_SMP << 1) | 1 = 11.
"""

from __future__ import annotations

import struct

from kvmtest.guest import layout
from kvmtest.guest.images import image

ROM_SIZE = 0x10000
WRAPPER = 0x4000
LANDING_AT = 0x3000
VECTOR = 0x10
EXIT_STATUS = (0x05 << 1) | 1  # REP_SMP through isa-debug-exit


def _gdt_ptr(smp: bytes) -> int:
    """Where the image keeps its unreal-mode gdt_ptr (guests/src/gdt.inc)."""
    base = layout.XAPIC_BASE
    descriptor = struct.pack(
        "<HHBBBB", 0xFFFF, base & 0xFFFF, base >> 16 & 0xFF, 0x93, 0, base >> 24
    )
    gdt = smp.index(descriptor) - 8
    ptr = gdt + 16
    limit, address = struct.unpack_from("<HI", smp, ptr)
    if limit != 15 or address != gdt:
        raise ValueError("smp.bin: no gdt_ptr after its GDT")
    return ptr


def smp_bios(cpus: int, wait_limit: int = 200_000) -> bytes:
    smp, landing = image("smp"), image("landing")
    code = bytes.fromhex(
        "fa fc 8cc8 8ed8 31c0 8ec0"  # cli; cld; ds = cs; es = 0
        "31ff b90020 f3ab"  # zero 0x0000-0x3fff
        "31f6 31ff b90030 f3a4"  # smp.bin -> 0:0
        "b80010 8ec0 31ff be0030 b90001 f3a4"  # landing -> 0x1000:0 (vector 0x10)
        "31c0 8ec0 8ed8"  # es = ds = 0
    )
    code += b"\xc7\x06" + struct.pack("<HH", layout.SMP_PARAMS, cpus)
    code += b"\xc7\x06" + struct.pack("<HH", layout.SMP_PARAMS + 2, 0)  # per CPU, xAPIC
    code += b"\xc7\x06" + struct.pack("<HH", layout.SMP_PARAMS + 4, VECTOR)
    code += b"\xc7\x06" + struct.pack("<HH", layout.SMP_PARAMS + 6, 0)
    code += b"\x66\xc7\x06" + struct.pack("<HI", layout.SMP_PARAMS + 8, wait_limit)
    code += b"\x66\x0f\x01\x16" + struct.pack("<H", _gdt_ptr(smp))  # lgdtl gdt_ptr
    code += bytes.fromhex(
        "0f20c0 0c01 0f22c0"  # CR0.PE = 1
        "bb0800 8ee3"  # fs = GDT_SEL_XAPIC: base 0xfee00000
        "24fe 0f22c0"  # CR0.PE = 0 (FS keeps its base: unreal mode)
    )
    code += b"\xea" + struct.pack("<HH", layout.ENTRY_BSP, 0)  # ljmp 0:ENTRY_BSP
    rom = bytearray(b"\xcc" * ROM_SIZE)
    rom[: len(smp)] = smp
    rom[LANDING_AT : LANDING_AT + len(landing)] = landing
    rom[WRAPPER : WRAPPER + len(code)] = code
    rom[0xFFF0:0xFFF5] = b"\xea" + struct.pack("<HH", WRAPPER, 0xF000)  # ljmp f000:4000
    return bytes(rom)


QEMU = [
    "qemu-system-x86_64", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
    "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
]  # fmt: skip


def seabios_command(cpus: int = 4) -> list:
    """QEMU with its default firmware (SeaBIOS) and no boot disk: SeaBIOS brings the APs up,
    the boot fails, and QEMU exits by itself (reboot-timeout=0 with -no-reboot; about 2.5 s)."""
    return QEMU + ["-m", "64", "-boot", "menu=off,reboot-timeout=0", "-smp", str(cpus)]


def qemu_command(bios_path: str, cpus: int = 4, extra=(), exits: bool = True) -> list:
    """QEMU running the smp image as its firmware; it exits by itself after the report, or
    with exits=False keeps running (the vCPUs halted) until told to quit (QMP)."""
    device = ["-device", "isa-debug-exit,iobase=0xeb,iosize=1"] if exits else []
    return QEMU + ["-smp", str(cpus), "-m", "16", "-bios", bios_path, *device, *extra]
