"""Kernel-generation profiles: which variant of each rule a kernel follows.

A profile is data, not code: a frozen record of switches, each naming the rule (section b of
docs/semantics.md) or quirk (d.7.N) it selects. The state machine in ``machine.py``
reads only these switches, so describing another kernel is a few lines here.

``generation`` picks the shape of the target-side tables in ``machine.py``:
1 = Linux 3.9 (the sender writes ``mp_state``), 2 = Linux 3.10 (the 2013 patch: pending
events), 3 = the modern ``kvm_apic_accept_events`` / ``vcpu_block`` code (6.1 and later).
Everything finer than that is a named switch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# KVM_VCPUEVENT_VALID_* (include/uapi/linux/kvm.h)
VALID_NMI_PENDING = 0x1
VALID_SIPI_VECTOR = 0x2
VALID_SHADOW = 0x4
VALID_SMM = 0x8
VALID_PAYLOAD = 0x10
VALID_TRIPLE_FAULT = 0x20

_OLD_EVENT_FLAGS = VALID_NMI_PENDING | VALID_SIPI_VECTOR | VALID_SHADOW
_NEW_EVENT_FLAGS = _OLD_EVENT_FLAGS | VALID_SMM | VALID_PAYLOAD | VALID_TRIPLE_FAULT


@dataclass(frozen=True)
class Profile:
    """The switches that distinguish one kernel's INIT/SIPI behaviour from another's."""

    name: str
    description: str
    generation: int
    # V1: the sender's thread writes the target's mp_state (rules 1 and 3, V1 variants; race (e)).
    sender_writes_mp_state: bool
    # rule 11: BSP = BSP bit of IA32_APIC_BASE (True) or vcpu_id == bsp_vcpu_id (False).
    bsp_by_apic_base: bool
    # rules 15-17: INIT latched and SIPI dropped while in SMM (4.2+).
    init_blocked_in_smm: bool
    # rule 16: INIT latched in VMX root operation / with GIF = 0 (5.4+).
    init_blocked_nested: bool
    # rules 21, 22, 24: PV unhalt (KVM_HC_KICK_CPU, delivery mode REMRD; 3.12+).
    pv_unhalt: bool
    # rule 21: every switch to RUNNABLE clears pv_unhalted (kvm_set_mp_state, 6.15).
    runnable_clears_pv_unhalted: bool
    # rule 18: a pending INIT/SIPI makes the vCPU runnable only when INIT/SIPI are allowed (6.1+).
    runnable_needs_init_allowed: bool
    # rule 22: HLT keeps R when events are already pending (False: H unconditionally).
    hlt_checks_pending_events: bool
    # rule 24: KVM_GET_MP_STATE processes pending events first (False: pure read, d.1).
    get_mp_state_processes: bool
    # rule 28 / d.2: KVM_SET_MP_STATE checks.
    set_mp_state_needs_lapic: bool  # non-RUNNABLE values need an in-kernel LAPIC (P)
    set_mp_state_whitelist: frozenset[int] | None  # values accepted at all (6.0+), None = any
    set_mp_state_rejects_wfs_when_blocked: bool  # IR/SR refused in SMM / SMI pending (to 6.16)
    # d.3: KVM_RUN.
    run_u_processes_events: bool  # rule 29: the U path runs kvm_apic_accept_events (P)
    run_u_reports_signal: bool  # rule 29: a signal in the U path gives -EINTR (about 4.14)
    run_rejects_blocked_ir: bool  # d.3: IR with INIT/SIPI blocked -> -EINVAL (6.17)
    run_rejects_sipi_received: bool  # d.3: SR -> WARN + -EINVAL (6.17)
    # d.5: KVM_SET_VCPU_EVENTS.
    vcpu_events_flags: int  # accepted flags; others -> -EINVAL
    vcpu_events_rejects_smm_in_ir: bool  # VALID_SMM with smm/pending while IR -> -EINVAL (to 6.16)
    # section c: which register images (see regs.py) and quirks d.7.9-11.
    image: str  # "v1" (reset at SIPI), "v2" (INIT == RESET), "v3" (separate INIT image)
    init_resets_apic_base_and_id: bool  # quirk d.7.9
    # rules 34, 35, 40.
    fast_path_empty_result: int  # d.4: count reported for an empty physical slot (-1 or 0)
    spiv_toggle_dirties_map: bool  # rule 34
    x2apic_icr_reserved_gp: bool  # rule 40: WRMSR 0x830 with reserved bits -> #GP
    # rule 37: with every APIC software-disabled the logical map says "nobody" (count 0);
    # before 35366901017c (6.3) the fast path gave up and the slow path found nothing (-1).
    logical_map_tracks_sw_disabled: bool


_MODERN_WHITELIST = frozenset({0, 1, 2, 3, 4, 9})

LINUX_3_9 = Profile(
    name="linux-3.9",
    description="V1, before 66450a21f996: the sender writes mp_state, SIPI_RECEIVED is visible",
    generation=1,
    sender_writes_mp_state=True,
    bsp_by_apic_base=False,
    init_blocked_in_smm=False,
    init_blocked_nested=False,
    pv_unhalt=False,
    runnable_clears_pv_unhalted=False,
    runnable_needs_init_allowed=False,
    hlt_checks_pending_events=False,
    get_mp_state_processes=False,
    set_mp_state_needs_lapic=False,
    set_mp_state_whitelist=None,
    set_mp_state_rejects_wfs_when_blocked=False,
    run_u_processes_events=False,
    run_u_reports_signal=False,
    run_rejects_blocked_ir=False,
    run_rejects_sipi_received=False,
    vcpu_events_flags=_OLD_EVENT_FLAGS,
    vcpu_events_rejects_smm_in_ir=False,
    image="v1",
    init_resets_apic_base_and_id=True,
    fast_path_empty_result=-1,
    spiv_toggle_dirties_map=False,
    x2apic_icr_reserved_gp=False,
    logical_map_tracks_sw_disabled=False,
)

LINUX_3_10 = replace(
    LINUX_3_9,
    name="linux-3.10",
    description="V2, 66450a21f996 'Rework INIT and SIPI handling': pending INIT/SIPI events",
    generation=2,
    sender_writes_mp_state=False,
    get_mp_state_processes=True,
    set_mp_state_needs_lapic=True,
    run_u_processes_events=True,
    image="v2",
)

LINUX_6_1 = Profile(
    name="linux-6.1",
    description="6.1 (Debian 12): SMM latching, value whitelist, IR/SR refused while blocked",
    generation=3,
    sender_writes_mp_state=False,
    bsp_by_apic_base=True,
    init_blocked_in_smm=True,
    init_blocked_nested=True,
    pv_unhalt=True,
    runnable_clears_pv_unhalted=False,
    runnable_needs_init_allowed=True,
    hlt_checks_pending_events=True,
    get_mp_state_processes=True,
    set_mp_state_needs_lapic=True,
    set_mp_state_whitelist=_MODERN_WHITELIST,
    set_mp_state_rejects_wfs_when_blocked=True,
    run_u_processes_events=True,
    run_u_reports_signal=True,
    run_rejects_blocked_ir=False,
    run_rejects_sipi_received=False,
    vcpu_events_flags=_NEW_EVENT_FLAGS,
    vcpu_events_rejects_smm_in_ir=True,
    image="v3",
    init_resets_apic_base_and_id=False,
    fast_path_empty_result=0,
    spiv_toggle_dirties_map=True,
    # UNVERIFIED for 6.1: X2APIC_ICR_RESERVED_BITS is in 6.11 and appears in stable backports.
    x2apic_icr_reserved_gp=True,
    logical_map_tracks_sw_disabled=False,  # observed on Debian 6.1.176: -EPERM (matrix)
)

# No modelled rule differs between 6.1 and 6.12 (docs/semantics.md d.2/d.5: both predate 6.17); the
# profile exists so that a trace can name the kernel it was judged against.
LINUX_6_12 = replace(
    LINUX_6_1,
    name="linux-6.12",
    description="6.12 (Debian 12 backports): the logical APIC map tracks software-disabled APICs",
    logical_map_tracks_sw_disabled=True,  # 35366901017c, 6.3
)

MAINLINE = replace(
    LINUX_6_12,
    name="mainline",
    description="6.17+ (host runs 6.18): SMM checks moved from SET_MP_STATE to KVM_RUN",
    set_mp_state_rejects_wfs_when_blocked=False,
    runnable_clears_pv_unhalted=True,
    run_rejects_blocked_ir=True,
    run_rejects_sipi_received=True,
    vcpu_events_rejects_smm_in_ir=False,
)

PROFILES: dict[str, Profile] = {
    p.name: p for p in (LINUX_3_9, LINUX_3_10, LINUX_6_1, LINUX_6_12, MAINLINE)
}

# Register-image flavours (section c.2): the vendor module decides the reported segment types.
FLAVOURS = ("vmx", "svm", "pvm")

# What `kvmtest doctor` detects (/sys/module/<backend>) -> flavour; kvm_pvm reports VMX-like types.
BACKEND_FLAVOURS = {"kvm_intel": "vmx", "kvm_amd": "svm", "kvm_pvm": "pvm"}


def get_profile(profile: str | Profile) -> Profile:
    """Accept a profile name or a Profile (so a caller can pass a home-made variant)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        from .errors import ModelError

        raise ModelError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}") from None


def flavour_for_backend(backend: str) -> str:
    """Map a vendor module name (kvm_intel, kvm_amd, kvm_pvm) to a register-image flavour."""
    return BACKEND_FLAVOURS.get(backend, "vmx")
