"""The host<->guest protocol: what a guest report is, and the guest layer's error types."""

from __future__ import annotations

from dataclasses import dataclass

from .layout import (
    CMD_CS_IP,
    CMD_HLT,
    CMD_ICR,
    CMD_SPIN,
    CMD_X2APIC,
    ERR_APIC_ID,
    ERR_BAD_COMMAND,
    MP_STATE_HALTED,
    REP_ERROR,
    REP_EXCEPTION,
    REP_READY,
    REP_RESET,
    REP_SIPI,
    REP_SMP,
)

# report kind -> (name, field names)
REPORTS = {
    REP_READY: ("ready", ("apic_id",)),
    REP_SIPI: ("sipi", ("vector", "apic_id")),
    REP_RESET: ("reset", ("cs", "apic_id")),
    REP_SMP: ("smp", ("online", "expected", "wait_left")),
    REP_EXCEPTION: ("exception", ("vector", "cs", "ip")),
    REP_ERROR: ("error", ("code", "value")),
    CMD_ICR: ("icr", ()),
    CMD_X2APIC: ("x2apic", ("apic_base",)),
    CMD_HLT: ("hlt", ()),
    CMD_CS_IP: ("cs_ip", ("cs", "ip")),
    CMD_SPIN: ("spin", ()),
}
ERRORS = {ERR_BAD_COMMAND: "unknown command", ERR_APIC_ID: "APIC ID out of range"}

# Stepper commands (trace names) and the report each sends when it finishes normally.
COMMAND_REPORTS = {"start": "ready", "x2apic": "x2apic", "spin": "spin", "report": "cs_ip"}
# Reports that answer a command rather than tell of a wake-up (a landing, a reset, a HLT).
COMMAND_ACKS = frozenset({"icr", "x2apic", "spin", "cs_ip", "ready"})


class GuestError(Exception):
    """A guest misbehaved: stray execution, an unexpected exit, a malformed report."""


class StrayExecution(GuestError):
    """The tripwire fired: a vCPU executed memory that holds no code."""

    def __init__(self, vcpu_index: int, cs: int, ip: int):
        self.vcpu_index = vcpu_index
        self.cs = cs
        self.ip = ip
        self.address = (cs << 4) + ip - 1  # the int3 pushed the address after itself
        note = " (or 0xffff0000 + IP in the reset ROM)" if cs == 0xF000 else ""
        super().__init__(
            f"vCPU {vcpu_index}: stray execution at {self.address:#x} "
            f"(CS:IP {cs:#06x}:{ip - 1:#06x}){note}"
        )


class Kicked(GuestError):
    """A blocking command was interrupted by kick() before the guest reported."""


@dataclass(frozen=True)
class Report:
    """One guest report: its kind ("ready", "sipi", "icr", ...) and values; fields by name."""

    kind: str
    values: tuple[int, ...]

    def fields(self) -> dict[str, int]:
        for name, names in REPORTS.values():
            if name == self.kind:
                return dict(zip(names, self.values, strict=False))
        return {}

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):  # copy/pickle probe special names before `kind` exists
            raise AttributeError(name)
        fields = self.fields()
        if name in fields:
            return fields[name]
        raise AttributeError(f"{self.kind} report has no field {name!r}")

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v:#x}" for k, v in self.fields().items())
        return f"{self.kind}({inner})"


@dataclass(frozen=True)
class SmpResult:
    """What an autonomous SMP boot showed: the BSP's count and each AP's state afterwards."""

    online: int  # reported by the BSP
    expected: int  # number of APs
    counter: int  # SMP_ONLINE read by the host after the APs were stopped
    wait_left: int  # iterations of the BSP's counted wait that were not needed
    ap_mp_states: tuple[int, ...]  # KVM_GET_MP_STATE of every AP, after kicking it

    @property
    def all_online(self) -> bool:
        return self.online == self.expected == self.counter and all(
            state == MP_STATE_HALTED for state in self.ap_mp_states
        )
