"""KVM_RUN exits as typed objects: a tagged union with an explicit Unknown case."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Io:
    """KVM_EXIT_IO. `data` is a copy of what an OUT wrote; answer an IN with Vcpu.complete_io_in."""

    port: int
    direction: str  # "in" or "out"
    size: int
    count: int
    data: bytes
    data_offset: int

    def value(self) -> int:
        """The first element written by an OUT, as an integer."""
        return int.from_bytes(self.data[: self.size], "little")


@dataclass(frozen=True, slots=True)
class Mmio:
    phys_addr: int
    data: bytes
    length: int
    is_write: bool


@dataclass(frozen=True, slots=True)
class Hlt:
    """KVM_EXIT_HLT: only without an in-kernel irqchip (with one, HLT is handled in the kernel)."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Triple fault."""


@dataclass(frozen=True, slots=True)
class Intr:
    """KVM_RUN returned EINTR: a signal (our kick) or immediate_exit."""


@dataclass(frozen=True, slots=True)
class FailEntry:
    reason: int


@dataclass(frozen=True, slots=True)
class InternalError:
    suberror: int
    data: tuple


@dataclass(frozen=True, slots=True)
class SystemEvent:
    type: int


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: int


Exit = Io | Mmio | Hlt | Shutdown | Intr | FailEntry | InternalError | SystemEvent | Unknown
