"""Kernel profiles: which variant of each rule a kernel follows, and which releases that is.

A profile is data, not code: a frozen record of named, typed switches. Each switch carries
metadata: the rule (section b of docs/semantics.md) or quirk (d.x) it selects, a one-line
description, and its ``layer``, the interface on which the difference shows:

* ``arch``: what the guest sees of its virtual CPU and APIC (instructions, IPIs, registers),
  whether that is the architecture or KVM's deviation from it;
* ``abi``: what the VMM sees of KVM's ioctls (return codes, accepted values, processing points).

``machine.py`` reads switches only, never a version number, so describing another kernel is a
``dataclasses.replace`` here, and ``apply_switches`` (``kvmtest --set``) asks "what if".
Each profile also names the releases it describes (``releases``, inclusive (major, minor)
bounds, ``None`` = open); ``profile_for_release`` picks one and refuses to guess.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Literal, NamedTuple

from .errors import ModelError

# KVM_VCPUEVENT_VALID_* (include/uapi/linux/kvm.h)
VALID_NMI_PENDING = 0x1
VALID_SIPI_VECTOR = 0x2
VALID_SHADOW = 0x4
VALID_SMM = 0x8
VALID_PAYLOAD = 0x10
VALID_TRIPLE_FAULT = 0x20

_OLD_EVENT_FLAGS = VALID_NMI_PENDING | VALID_SIPI_VECTOR | VALID_SHADOW
_NEW_EVENT_FLAGS = _OLD_EVENT_FLAGS | VALID_SMM | VALID_PAYLOAD | VALID_TRIPLE_FAULT

ARCH, ABI = "arch", "abi"

Version = tuple[int, int]


def _switch(layer: str, rule: str, doc: str):
    return field(metadata={"layer": layer, "rule": rule, "doc": doc})


@dataclass(frozen=True)
class Profile:
    """The switches that distinguish one kernel's INIT/SIPI behaviour from another's."""

    name: str
    description: str
    # Inclusive (major, minor) bounds; the upper one None for "and later".
    releases: tuple[Version, Version | None]

    # --- delivery and processing (b.1, b.2)
    sender_writes_mp_state: bool = _switch(
        ARCH,
        "rules 1, 3, 4, 8, 9, 10, 20, 25; d.7.1-3, d.7.7, d.7.8; section e",
        "the sender writes the target's mp_state (INIT -> IR, SIPI in IR ->"
        " SR, else ignored); no pending events (3.9)",
    )
    bsp_by_apic_base: bool = _switch(
        ARCH,
        "rules 10, 11; d.7.8",
        "BSP = the BSP bit of IA32_APIC_BASE, not vcpu_id == bsp_vcpu_id (about 4.1)",
    )
    smm_emulation: bool = _switch(
        ARCH, "rules 15, 32", "SMIs (IPI, KVM_SMI) are accepted and enter SMM (4.2)"
    )
    init_blocked_in_smm: bool = _switch(
        ARCH, "rules 15, 17, 32", "INIT is latched and SIPI dropped while in SMM (4.2)"
    )
    init_blocked_nested: bool = _switch(
        ARCH, "rules 16, 17", "INIT is latched in VMX root operation / with GIF = 0 (5.4)"
    )
    ap_reset_hold: bool = _switch(
        ARCH, "rule 19", "a wake-up turns AP_RESET_HOLD into RUNNABLE, as HALTED (SEV-ES, 5.11)"
    )
    # --- runnability, HLT, PV unhalt (b.3)
    pv_unhalt: bool = _switch(
        ARCH, "rules 21, 22, 24", "KVM_HC_KICK_CPU (a REMRD IPI) sets pv_unhalted (3.12)"
    )
    runnable_clears_pv_unhalted: bool = _switch(
        ARCH, "rule 21", "every switch to RUNNABLE clears pv_unhalted (kvm_set_mp_state, 6.15)"
    )
    runnable_needs_init_allowed: bool = _switch(
        ARCH, "rule 18", "a pending INIT/SIPI makes the vCPU runnable only when allowed (6.1)"
    )
    hlt_checks_pending_events: bool = _switch(
        ARCH,
        "rule 22; section e",
        "HLT keeps RUNNABLE when events are pending (else HALTED regardless)",
    )
    wake_exits_other_states: bool = _switch(
        ABI,
        "rule 20; a.1",
        "a wake-up in a state other than R/H/IR ends KVM_RUN with -EINTR (the"
        " UNHALT switch, to 6.0); else vcpu_block sleeps again",
    )
    # --- mp_state ioctls (b.4, d.1, d.2)
    get_mp_state_processes: bool = _switch(
        ABI, "rules 8, 24; d.1, d.7.4", "KVM_GET_MP_STATE processes pending events first (3.10)"
    )
    set_mp_state_needs_lapic: bool = _switch(
        ABI,
        "rule 28; d.2",
        "KVM_SET_MP_STATE of a value other than RUNNABLE needs an in-kernel LAPIC",
    )
    set_mp_state_whitelist: frozenset[int] | None = _switch(
        ABI, "rule 28; d.2", "values KVM_SET_MP_STATE accepts at all; none = any (6.0)"
    )
    set_mp_state_rejects_wfs_when_blocked: bool = _switch(
        ABI,
        "rule 28; d.2",
        "KVM_SET_MP_STATE refuses IR/SR with INIT blocked or an SMI pending (4.16-6.16)",
    )
    # --- KVM_RUN (d.3)
    run_u_processes_events: bool = _switch(
        ABI, "rule 29; d.3, d.7.6", "KVM_RUN in UNINITIALIZED processes pending events (3.10)"
    )
    run_u_reports_signal: bool = _switch(
        ABI, "rule 29; d.3", "KVM_RUN in UNINITIALIZED returns -EINTR for a signal (about 4.14)"
    )
    immediate_exit: bool = _switch(
        ABI,
        "rule 29; d.3",
        "KVM_CAP_IMMEDIATE_EXIT exists: kvm_run.immediate_exit -> -EINTR (4.11)",
    )
    run_rejects_blocked_ir: bool = _switch(
        ABI, "d.3", "KVM_RUN in INIT_RECEIVED with INIT/SIPI blocked -> -EINVAL (6.17)"
    )
    run_rejects_sipi_received: bool = _switch(
        ABI, "d.3", "KVM_RUN in SIPI_RECEIVED -> WARN + -EINVAL (6.17)"
    )
    # --- KVM_GET/SET_VCPU_EVENTS (d.5)
    vcpu_events_flags: int = _switch(
        ABI,
        "rules 31, 32; d.5, d.7.14",
        "KVM_VCPUEVENT_VALID_* flags SET_VCPU_EVENTS accepts; others -EINVAL",
    )
    vcpu_events_rejects_smm_in_ir: bool = _switch(
        ABI, "d.5", "VALID_SMM with smm/pending while INIT_RECEIVED -> -EINVAL (4.16-6.16)"
    )
    # --- register images (section c)
    image: Literal["v1", "v2", "v3"] = _switch(
        ARCH,
        "rules 10, 13; section c; d.7.10, d.7.11",
        "register images (regs.py): v1 reset at SIPI, v2 INIT == RESET, v3 a"
        " separate INIT image (about 4.1)",
    )
    common_reset_image: bool = _switch(
        ARCH,
        "rule 10; section c; d.7.10, d.7.11",
        "V3: kvm_vcpu_reset writes the RESET/INIT image (5.15): INIT keeps CR0.CD/NW, RDX ="
        " CPUID.1.EAX or 0x600; before, each vendor's (CR0 0x60000010; SVM RDX kvm_cpuid(1),"
        " GDTR/IDTR base kept)",
    )
    init_resets_apic_base_and_id: bool = _switch(
        ARCH, "d.7.9", "INIT re-sets the APIC ID (and, VMX, IA32_APIC_BASE) (before about 4.1)"
    )
    # --- routing and encodings (b.5, b.6)
    phys_dest_mask: int = _switch(
        ARCH, "rule 35", "bits of a physical destination the APIC map looks up (3.x: 0xff)"
    )
    spiv_toggle_dirties_map: bool = _switch(
        ARCH, "rule 34", "toggling the SPIV software-enable bit recalculates the APIC map"
    )
    msi_redir_hint: bool = _switch(
        ARCH, "rule 38; d.4", "the MSI redirection hint makes delivery lowest-priority (one target)"
    )
    x2apic_icr_reserved_gp: bool = _switch(
        ARCH, "rule 40", "WRMSR 0x830 with reserved ICR bits -> #GP (6.11, stable backports)"
    )
    fast_path_empty_result: int = _switch(
        ABI,
        "rules 35, 39; d.4, d.7.12",
        "KVM_SIGNAL_MSI count for an empty physical map slot (3.x: -1)",
    )
    logical_map_tracks_sw_disabled: bool = _switch(
        ABI,
        "rule 37",
        "all APICs software-disabled: the logical map says nobody (count 0, not the"
        " slow path's -1; 35366901017c, 6.3)",
    )
    x2apic_api: bool = _switch(
        ABI,
        "rules 38, 39",
        "KVM_CAP_X2APIC_API: 32-bit MSI destinations, address_hi[7:0] -> -EINVAL (4.7)",
    )

    # What apply_switches changed relative to the named profile, in order.
    changes: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """The name, plus any --set changes: ``mainline[hlt_checks_pending_events=false]``
        (changes separated by ``;``)."""
        if not self.changes:
            return self.name
        return f"{self.name}[{';'.join(f'{k}={format_value(v, k)}' for k, v in self.changes)}]"

    @property
    def release_range(self) -> str:
        """``3.10``, ``6.3-6.14`` or ``6.17+``."""
        lo, hi = self.releases
        if hi is None:
            return f"{_v(lo)}+"
        return _v(lo) if lo == hi else f"{_v(lo)}-{_v(hi)}"

    def covers(self, version: Version) -> bool:
        lo, hi = self.releases
        return lo <= version and (hi is None or version <= hi)


class Switch(NamedTuple):
    """A profile switch as ``--set`` and the docs see it."""

    name: str
    kind: str  # "bool", "int", "set" (frozenset[int] | None) or "enum"
    layer: str
    rule: str
    doc: str
    choices: tuple = ()  # the names an enum allows


def _switches(cls: type | None = None) -> dict[str, Switch]:
    cls = cls or Profile
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if "layer" not in f.metadata:
            continue
        hint = hints[f.name]
        choices = ()
        if hint is bool:
            kind = "bool"
        elif hint is int:
            kind = "int"
        elif typing.get_origin(hint) is Literal:
            kind, choices = "enum", typing.get_args(hint)
        else:
            kind = "set"
        out[f.name] = Switch(
            f.name, kind, f.metadata["layer"], f.metadata["rule"], f.metadata["doc"], choices
        )
    return out


SWITCHES: dict[str, Switch] = _switches()

_MODERN_WHITELIST = frozenset({0, 1, 2, 3, 4, 9})

LINUX_3_9 = Profile(
    name="linux-3.9",
    description="V1, before 66450a21f996: the sender writes mp_state, SIPI_RECEIVED is visible",
    # V1 as read in the 3.9 tree; 3.0-3.8 are assumed to share its shape (UNVERIFIED).
    releases=((3, 0), (3, 9)),
    sender_writes_mp_state=True,
    bsp_by_apic_base=False,
    smm_emulation=False,
    init_blocked_in_smm=False,
    init_blocked_nested=False,
    ap_reset_hold=False,
    pv_unhalt=False,
    runnable_clears_pv_unhalted=False,
    runnable_needs_init_allowed=False,
    hlt_checks_pending_events=False,
    wake_exits_other_states=True,
    get_mp_state_processes=False,
    set_mp_state_needs_lapic=False,
    set_mp_state_whitelist=None,
    set_mp_state_rejects_wfs_when_blocked=False,
    run_u_processes_events=False,
    run_u_reports_signal=False,
    immediate_exit=False,
    run_rejects_blocked_ir=False,
    run_rejects_sipi_received=False,
    vcpu_events_flags=_OLD_EVENT_FLAGS,
    vcpu_events_rejects_smm_in_ir=False,
    image="v1",
    common_reset_image=True,  # only read with image v3
    init_resets_apic_base_and_id=True,
    phys_dest_mask=0xFF,
    spiv_toggle_dirties_map=False,
    msi_redir_hint=False,
    x2apic_icr_reserved_gp=False,
    fast_path_empty_result=-1,
    logical_map_tracks_sw_disabled=False,
    x2apic_api=False,
)

LINUX_3_10 = replace(
    LINUX_3_9,
    name="linux-3.10",
    description="V2, 66450a21f996 'Rework INIT and SIPI handling': pending INIT/SIPI events",
    # Only 3.10: by about 3.11 (00395b6fcac3) VMX writes CS base 0xffff0000 (c.3), and 3.12
    # brought PV unhalt.
    releases=((3, 10), (3, 10)),
    sender_writes_mp_state=False,
    get_mp_state_processes=True,
    set_mp_state_needs_lapic=True,
    run_u_processes_events=True,
    image="v2",
)

LINUX_6_1 = Profile(
    name="linux-6.1",
    description="6.1 (Debian 12): SMM latching, value whitelist, IR/SR refused while blocked",
    releases=((6, 1), (6, 2)),  # 6.1: bf7f9352af5d, c59fb1275838; 6.3: 35366901017c
    sender_writes_mp_state=False,
    bsp_by_apic_base=True,
    smm_emulation=True,
    init_blocked_in_smm=True,
    init_blocked_nested=True,
    ap_reset_hold=True,
    pv_unhalt=True,
    runnable_clears_pv_unhalted=False,
    runnable_needs_init_allowed=True,
    hlt_checks_pending_events=True,
    wake_exits_other_states=False,
    get_mp_state_processes=True,
    set_mp_state_needs_lapic=True,
    set_mp_state_whitelist=_MODERN_WHITELIST,
    set_mp_state_rejects_wfs_when_blocked=True,
    run_u_processes_events=True,
    run_u_reports_signal=True,
    immediate_exit=True,
    run_rejects_blocked_ir=False,
    run_rejects_sipi_received=False,
    vcpu_events_flags=_NEW_EVENT_FLAGS,
    vcpu_events_rejects_smm_in_ir=True,
    image="v3",
    common_reset_image=True,  # kvm_vcpu_reset, 6.1.176 x86.c (5.15 rework)
    init_resets_apic_base_and_id=False,
    phys_dest_mask=0xFFFFFFFF,
    spiv_toggle_dirties_map=True,
    msi_redir_hint=True,
    # X2APIC_ICR_RESERVED_BITS is in 6.11 and in Debian's 6.1.176 (read: a stable backport).
    x2apic_icr_reserved_gp=True,
    fast_path_empty_result=0,
    logical_map_tracks_sw_disabled=False,  # observed on Debian 6.1.176: -EPERM (matrix)
    x2apic_api=True,
)

LINUX_6_12 = replace(
    LINUX_6_1,
    name="linux-6.12",
    description="6.12 (Debian 12 backports): the logical APIC map tracks software-disabled APICs",
    releases=((6, 3), (6, 14)),  # 6.15: kvm_set_mp_state clears pv_unhalted (rule 21)
    logical_map_tracks_sw_disabled=True,  # 35366901017c, 6.3
)

MAINLINE = replace(
    LINUX_6_12,
    name="mainline",
    description="6.17+ (host runs 6.18): SMM checks moved from SET_MP_STATE to KVM_RUN",
    releases=((6, 17), None),
    set_mp_state_rejects_wfs_when_blocked=False,
    runnable_clears_pv_unhalted=True,
    run_rejects_blocked_ir=True,
    run_rejects_sipi_received=True,
    vcpu_events_rejects_smm_in_ir=False,
)

# --- kernels people run, between 3.10 and 6.1 (the kernels helper's block) ---------------
# Each field that differs from the next newer profile is a switch with its source trail in
# docs/semantics.md (the switch index, "Kernel generations"); see docs/kernel-matrix.md for
# the kernels that judged them.

LINUX_5_10 = replace(
    LINUX_6_1,
    name="linux-5.10",
    description="5.4-5.10 (Debian 11): no AP_RESET_HOLD, no mp_state whitelist, UNHALT switch",
    # 5.4: 4b9852f4f389 (INIT latched in VMX root / GIF = 0); 5.11: 647daca25d24 (ARH).
    # No modelled switch differs between 5.4 and 5.10, so one profile spans them.
    releases=((5, 4), (5, 10)),
    ap_reset_hold=False,  # KVM_MP_STATE_AP_RESET_HOLD is 5.11 (rule 19)
    runnable_needs_init_allowed=False,  # bf7f9352af5d, 6.1 (rule 18)
    wake_exits_other_states=True,  # the UNHALT switch, until c59fb1275838 (6.1) (rule 20)
    set_mp_state_whitelist=None,  # 22c6a0ef6b26, 6.0 (rule 28)
    vcpu_events_flags=_OLD_EVENT_FLAGS | VALID_SMM | VALID_PAYLOAD,  # TRIPLE_FAULT: 5.19
    common_reset_image=False,  # 5.10.223: vmx_vcpu_reset / svm_vcpu_reset write it (c.5)
    hlt_checks_pending_events=False,  # 5.10.223 kvm_vcpu_halt: HALTED unconditionally
    x2apic_icr_reserved_gp=False,  # 5.10.223 kvm_x2apic_msr_write: no reserved-bit check
)

LINUX_4_18 = replace(
    LINUX_5_10,
    name="linux-4.18",
    description="4.18-4.19 upstream: INIT not latched by nesting, no exception payload",
    releases=((4, 18), (4, 19)),  # 4.20: 59073aaf6de0 (VALID_PAYLOAD)
    init_blocked_nested=False,  # 4b9852f4f389, 5.4 (rule 16)
    vcpu_events_flags=_OLD_EVENT_FLAGS | VALID_SMM,  # VALID_PAYLOAD: 59073aaf6de0, 4.20
)

_RUN_BETWEEN = (LINUX_4_18, LINUX_5_10)
# --- end of the kernels helper's block -----------------------------------------------------

PROFILES: dict[str, Profile] = {
    p.name: p for p in (LINUX_3_9, LINUX_3_10, *_RUN_BETWEEN, LINUX_6_1, LINUX_6_12, MAINLINE)
}

# --- architectural profiles (sdm, apm): defined and registered by architecture.py, which
# imports this module; get_profile finds them by name, profile_for_release never picks them.
ARCHITECTURE_PROFILES: dict[str, Profile] = {}

# Register-image flavours (section c.2): the vendor module decides the reported segment types.
FLAVOURS = ("vmx", "svm", "pvm")

# What `kvmtest doctor` detects (/sys/module/<backend>) -> flavour; kvm_pvm reports VMX-like types.
BACKEND_FLAVOURS = {"kvm_intel": "vmx", "kvm_amd": "svm", "kvm_pvm": "pvm"}


def get_profile(profile: str | Profile) -> Profile:
    """Accept a profile name or a Profile (so a caller can pass a home-made variant)."""
    if isinstance(profile, Profile):
        return profile
    if profile in PROFILES:
        return PROFILES[profile]
    if profile in ARCHITECTURE_PROFILES:
        return ARCHITECTURE_PROFILES[profile]
    known = ", ".join([*PROFILES, *ARCHITECTURE_PROFILES])
    raise ModelError(f"unknown profile {profile!r}; known: {known}")


def flavour_for_backend(backend: str) -> str:
    """Map a vendor module name (kvm_intel, kvm_amd, kvm_pvm) to a register-image flavour."""
    return BACKEND_FLAVOURS.get(backend, "vmx")


# ---------------------------------------------------------------------------- releases


def _v(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def parse_release(release: str) -> Version:
    """(major, minor) of a release string such as ``6.1.0-50-amd64``; ModelError otherwise."""
    match = re.match(r"\s*(\d+)\.(\d+)", release)
    if not match:
        raise ModelError(f"cannot read a kernel version from release {release!r}")
    return int(match[1]), int(match[2])


def profile_for_release(release: str) -> Profile:
    """The profile whose release range covers ``release``. A release between ranges is an
    error, not a guess: judging it by a neighbour would report the neighbour's differences
    as KVM bugs."""
    version = parse_release(release)
    for p in PROFILES.values():
        if p.covers(version):
            return p
    below = [p for p in PROFILES.values() if p.releases[1] is not None and p.releases[1] < version]
    above = [p for p in PROFILES.values() if version < p.releases[0]]
    nearest = []
    if below:
        nearest.append(max(below, key=lambda p: p.releases[1]))
    if above:
        nearest.append(min(above, key=lambda p: p.releases[0]))
    names = ", ".join(f"{p.name} ({p.release_range})" for p in nearest)
    raise ModelError(
        f"no profile covers {_v(version)} (release {release!r}); nearest: {names}; "
        "choose one explicitly"
    )


# ---------------------------------------------------------------------------- --set


def format_value(value, switch: str = "") -> str:
    """A switch value as apply_switches parses it back (flags and masks in hex)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, frozenset):
        return ",".join(str(x) for x in sorted(value))
    if isinstance(value, int) and switch.endswith(("_flags", "_mask")):
        return hex(value)
    return str(value)


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_INT = re.compile(r"-?(0x[0-9a-f]+|[0-9]+)\Z")


def _int(text: str) -> int:
    t = text.strip().lower()
    if not _INT.match(t):
        raise ValueError(text)
    return int(t, 0) if "x" in t else int(t, 10)


def _parse(sw: Switch, text: str):
    t = text.strip().lower()
    if sw.kind == "bool":
        if t not in _BOOLS:
            raise ValueError("true, false, 1, 0, yes, no")
        return _BOOLS[t]
    if sw.kind == "enum":
        if t not in sw.choices:
            raise ValueError(", ".join(sw.choices))
        return t
    try:
        if sw.kind == "int":
            return _int(t)
        if t == "none":
            return None
        return frozenset(_int(x) for x in t.split(",")) if t else frozenset()
    except ValueError:
        if sw.kind == "int":
            raise ValueError("a decimal or 0x hex integer") from None
        raise ValueError("comma-separated integers, or none for no check") from None


def apply_switches(profile: str | Profile, assignments: list[str]) -> Profile:
    """The profile with ``switch=value`` assignments applied (``kvmtest --set``). The name
    stays the base name; ``changes`` (and so ``label``) records what was set."""
    base = get_profile(profile)
    changes = dict(base.changes)
    switches = SWITCHES if type(base) is Profile else _switches(type(base))
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ModelError(f"--set {item!r}: expected switch=value")
        if name not in switches:
            raise ModelError(
                f"--set {item!r}: unknown switch {name!r}; valid switches: {', '.join(switches)}"
            )
        sw = switches[name]
        try:
            changes[name] = _parse(sw, text)
        except ValueError as exc:
            raise ModelError(
                f"--set {item!r}: bad {sw.kind} value {text!r} for {name}; valid: {exc}"
            ) from None
    return replace(base, **changes, changes=tuple(changes.items()))
