"""The built guest images (package data) and the RAM and ROM contents the loader maps."""

from __future__ import annotations

import functools
from importlib import resources

from .layout import (
    IMAGE_LIMIT,
    MAILBOX_BASE,
    RAM_SIZE,
    RESET_OFFSET,
    ROM_SIZE,
    STACK_BASE,
    TRIPWIRE,
    VECTOR_FIRST,
    VECTOR_LAST,
)
from .protocol import GuestError


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
