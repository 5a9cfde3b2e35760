"""The KVM INIT/SIPI state machine: one VM, its vCPUs, and the threads that run them.

Theory of operation
===================

Rule numbers (``# rule N``) and quirks (``# d.7.N``) refer to docs/semantics.md (anchors
#rule-N, #d7-N); each can be checked against arch/x86/kvm/lapic.c
(``__apic_accept_irq``, ``kvm_apic_accept_events``) and x86.c (``vcpu_block``,
``kvm_arch_vcpu_ioctl_run``, ``kvm_arch_vcpu_ioctl_{get,set}_mpstate``, ``..._vcpu_events``).

*What a vCPU is.* ``VCpu`` holds what userspace can observe or influence: ``mp_state`` (the
``KVM_MP_STATE_*`` value, ``MpState``), ``apic_base`` (its BSP bit 8 decides "BSP" from 4.1 on,
rule 11), the pending INIT and SIPI bits and the stored ``sipi_vector`` (``struct kvm_lapic``,
rules 1-4, 14), ``smm`` / ``smi_pending`` / ``nmi_pending``, the LAPIC registers that route
interrupts (ID, LDR, DFR, SPIV), ``req_event`` (KVM_REQ_EVENT, raised by every kick, rule 7) and
the register image (``regs.py``). It also holds where its *thread* is (``phase``): outside
KVM_RUN (OUT), running guest code (GUEST), blocked in ``kvm_vcpu_block`` (BLOCKED), blocked in the
UNINITIALIZED branch of KVM_RUN (U_BLOCK), or between the HLT VM exit and ``kvm_emulate_halt``
(HALT_EXIT). ``in_run`` is ``phase != OUT`` (design.md).

*Profiles.* Every difference between kernels is a named switch of ``self.profile``
(``profiles.py``: rule, layer and meaning of each); the code below reads switches, never a
version. Where a table row differs between kernels, its cell is ``By(switch, {value: cell})``;
``resolve`` picks the cells for one profile once, so a lookup is a plain dict access.

*Who writes mp_state.* With ``sender_writes_mp_state`` (``linux-3.9``) the sender's thread
writes the target's ``mp_state`` in ``__apic_accept_irq`` (table ``SENDER_WRITES``). Without it
(``linux-3.10`` on) the sender only sets pending bits and stores the vector
(``SENDER_PENDING``); the target thread turns them into state changes in ``_accept_events`` =
``kvm_apic_accept_events``: INIT first (reset image, then ``ACCEPT_INIT``: R for the BSP, IR for
an AP), then SIPI (``ACCEPT_SIPI``: only IR -> R with the CS/RIP fix-up; anywhere else the SIPI
is dropped but the vector kept). With ``init_blocked_in_smm`` / ``init_blocked_nested`` INIT is
latched and SIPI dropped while INIT is blocked (SMM, VMX root, GIF = 0), rules 15-17.

*Processing points* (rule 8) are the only places pending events are acted on: KVM_RUN entry and
the target's own loop (``RUN_ENTRY``, the ``guest_event`` and ``wake`` reactions, ``WAKE``), and
KVM_GET_MP_STATE (rule 24, ``get_mp_state_processes``). GET_REGS/GET_SREGS/GET_VCPU_EVENTS
never process.

*Threads and atomic steps.* Every public operation is made of atomic steps (``atomic_steps``): a
step is what one thread does without another thread being able to observe a half-done state, at
the granularity the race of section e (docs/semantics.md#section-e) needs. Most operations are
one step. ``guest_hlt`` is two: ``hlt_exit`` (the VM exit decision; the thread is now in
HALT_EXIT) and ``emulate_halt`` (the ``kvm_emulate_halt`` write). With
``sender_writes_mp_state`` an INIT sent between the two is overwritten by the HLT write: the
race of section (e). ``enter_run`` is the step ``run_entry`` followed by the vCPU's own
reactions. Reactions of a thread inside KVM_RUN to what other threads did (woken by a kick, an
event request while in guest mode) are the steps listed by ``pending_steps()`` as ``(vcpu,
name)`` with names ``guest_event``, ``wake`` and ``wake_uninit``; ``step(vcpu, name)`` applies
one and ``settle()`` applies all of them (lowest vCPU first) until none is enabled, which is
what sequential replay does after each operation. An explorer runs each thread's operation list
as ``atomic_steps``, asks ``can_apply(step)`` whether the thread can take its next step now (a
guest instruction needs guest mode, an ioctl needs the thread outside KVM_RUN), and interleaves
those with ``pending_steps``, using ``clone()`` and the hashable ``key()`` for a visited set
(tests/reference/test_race.py does exactly this)::

    # [Step('hlt_exit', (1,)), Step('emulate_halt', (1,))]
    for step in m.atomic_steps("guest_hlt", 1):
        m.apply(step)  # another thread's step may come in between

A vCPU ioctl (GET/SET_MP_STATE, GET_REGS, ...) on a vCPU whose thread is inside KVM_RUN would
block until KVM_RUN returns (host-findings.md#finding-2), so the model refuses it with
``ModelError``:
``kick_out`` first.

*Registers.* The image after INIT/RESET/SIPI comes from ``regs.py`` (section c) and depends on
the profile's ``image`` switch and the flavour (vmx, svm, pvm). ``guest_runs`` marks everything
the guest owns as ``GUEST``; a value a reset does not write keeps what the last write left.

*Routing.* ``icr_write`` and ``signal_msi`` decode (``encodings.py``, rules 38, 40) and route
(rules 33-37, 41): a fast path through the APIC map, whose members are the vCPUs that were online
at its last recalculation (the newest vCPU is missing after creation, rule 33, until KVM_SET_LAPIC,
an ID/LDR/DFR write, an APIC_BASE mode change or an INIT reset recalculates it, rule 34), and a
slow path over every present LAPIC for shorthands, broadcasts and a disabled map (rule 35).

Transition tables are the dicts below (``SENDER_WRITES``, ``SENDER_PENDING``, ``ACCEPT_INIT``,
``ACCEPT_SIPI``, ``RUN_ENTRY``, ``WAKE``, ``HLT``, ``SET_MP_STATE``); the code looks transitions
up in them. ``describe.transition_table(profile)`` shows what they produce, by running the model.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from functools import cache
from operator import itemgetter
from typing import NamedTuple

from . import encodings as enc
from . import regs as R
from .architecture import arch_value
from .errors import ModelError
from .profiles import (
    VALID_NMI_PENDING,
    VALID_SHADOW,
    VALID_SIPI_VECTOR,
    VALID_SMM,
    Profile,
    get_profile,
)

EINVAL = -22
ENOTTY = -25


class MpState(IntEnum):
    """``KVM_MP_STATE_*`` (include/uapi/linux/kvm.h)."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8
    AP_RESET_HOLD = 9
    SUSPENDED = 10


RUN, U, IR, H, SR, ARH = (
    MpState.RUNNABLE,
    MpState.UNINITIALIZED,
    MpState.INIT_RECEIVED,
    MpState.HALTED,
    MpState.SIPI_RECEIVED,
    MpState.AP_RESET_HOLD,
)


class Phase(IntEnum):
    """Where the vCPU's thread is."""

    OUT = 0  # in userspace
    GUEST = 1  # inside KVM_RUN, running guest code (mp_state R)
    BLOCKED = 2  # inside KVM_RUN, in kvm_vcpu_block (H, IR, ...)
    U_BLOCK = 3  # inside KVM_RUN, in the UNINITIALIZED branch's kvm_vcpu_block
    HALT_EXIT = 4  # inside KVM_RUN, after the HLT VM exit, before kvm_emulate_halt


class RunResult(str, Enum):
    """What KVM_RUN did: the guest runs, the thread sleeps, or the ioctl returned."""

    RUNS = "runs"
    BLOCKED = "blocked"
    EAGAIN = "-EAGAIN"
    EINTR = "-EINTR"  # KVM_EXIT_INTR
    EINVAL = "-EINVAL"
    EXIT_HLT = "KVM_EXIT_HLT"  # no in-kernel LAPIC: HLT goes to userspace

    def __str__(self) -> str:
        return self.value


class Step(NamedTuple):
    """One atomic step: ``Machine.apply(step)`` performs it."""

    op: str
    args: tuple


ANY = "any"  # table key: every other state
KEEP = "unchanged"  # table value: mp_state is not written

# ----------------------------------------------------------------------------------------------
# Transition tables
# ----------------------------------------------------------------------------------------------


# A cell that differs between kernels: the profile's value of ``switch`` picks the cell.
class By(NamedTuple):
    switch: str
    cases: dict


def resolve(table: dict, profile: Profile) -> dict:
    """The table with every ``By`` cell replaced by the cell the profile's switches pick."""
    return {key: _pick(cell, profile) for key, cell in table.items()}


def _pick(cell, profile: Profile):
    while isinstance(cell, By):
        cell = cell.cases[getattr(profile, cell.switch)]
    return cell


# Sender side with sender_writes_mp_state (rules 1 and 3, V1 variants):
# event -> state -> (new mp_state, count).
SENDER_WRITES = {
    "INIT": {ANY: (IR, 1)},  # rule 1 (V1): written at once, no register change
    "SIPI": {IR: (SR, 1), ANY: (KEEP, 0)},  # rule 3 (V1): only in IR, else ignored, vector lost
}

# Sender side without it (rules 1-4): event -> (effect on the pending bits, count).
SENDER_PENDING = {
    "INIT": ("pending := {INIT} (a pending SIPI is discarded)", 1),  # rule 1
    "SIPI": ("sipi_vector := v; pending |= {SIPI}", 1),  # rules 3, 4
}

# kvm_apic_accept_events (rules 9-12): INIT first, then SIPI.
ACCEPT_INIT = {"BSP": RUN, "AP": IR}  # rule 10 (BSP per rule 11)
ACCEPT_SIPI = {IR: RUN, ANY: KEEP}  # rules 12, 13: elsewhere the SIPI is dropped

# KVM_RUN entry (d.3): state -> action.
#   run: enter the guest; block: kvm_vcpu_block; block_u: the UNINITIALIZED branch;
#   sipi_reset: V1 resets from SIPI_RECEIVED, then runs; check_blocked_ir: -EINVAL when INIT/SIPI
#   are blocked, else block; einval: -EINVAL.
RUN_ENTRY = {
    U: "block_u",  # rule 29
    RUN: "run",
    IR: By("run_rejects_blocked_ir", {True: "check_blocked_ir", False: "block"}),  # d.3 (6.17)
    SR: By(
        "sender_writes_mp_state",
        {
            True: "sipi_reset",  # a.1, c.4
            False: By("run_rejects_sipi_received", {True: "einval", False: "block"}),  # d.3
        },
    ),
    ANY: "block",
}

# After a wake-up from kvm_vcpu_block (the UNHALT switch, later vcpu_block), after processing
# events unless sender_writes_mp_state: state -> (new mp_state, next).
#   run: back to the guest; block: sleep again; eintr: KVM_RUN returns -EINTR.
_WAKE_OTHER = By("wake_exits_other_states", {True: (KEEP, "eintr"), False: (KEEP, "block")})
WAKE = {
    H: (RUN, "run"),  # rule 19
    RUN: (KEEP, "run"),
    # rule 20: IR stays IR; V1 only wakes in IR for an NMI, and the UNHALT switch exits (a.1)
    IR: By("sender_writes_mp_state", {True: _WAKE_OTHER, False: (KEEP, "block")}),
    ARH: By("ap_reset_hold", {True: (RUN, "run"), False: _WAKE_OTHER}),  # rule 19
    ANY: _WAKE_OTHER,  # UNHALT switch default: -EINTR; vcpu_block: WARN_ON_ONCE, sleep again
}

# Guest HLT, kvm_emulate_halt (rule 22): hlt_checks_pending_events -> events pending? -> state.
HLT = {
    False: {False: H, True: H},  # V1/V2: unconditional write (the race of section e)
    True: {False: H, True: RUN},  # V3: stays R when events are pending
}

# KVM_SET_MP_STATE (rules 25-28, d.2): value -> (needs an in-kernel LAPIC under
# set_mp_state_needs_lapic, state written, pending SIPI added). Values not listed: stored as is
# unless the whitelist refuses.
SET_MP_STATE = {
    RUN: (False, RUN, False),
    U: (True, U, False),
    IR: (True, IR, False),  # rule 26: a label only, no reset
    H: (True, H, False),
    # rule 25: IR + pending SIPI with the stored vector; V1 stores SR (d.2), KVM_RUN resets
    SR: By("sender_writes_mp_state", {True: (True, SR, False), False: (True, IR, True)}),
    ARH: (True, ARH, False),
}

APIC_BASE_BSP = 1 << 8
APIC_BASE_X2APIC = 1 << 10
APIC_BASE_ENABLE = 1 << 11
APIC_DEFAULT_BASE = 0xFEE00000
SPIV_ENABLE = 1 << 8

_REG_ORDER = R.GUEST_OWNED


@cache
def _tables(profile: Profile) -> tuple[dict, dict, dict]:
    """RUN_ENTRY, WAKE and SET_MP_STATE as this profile's switches pick them."""
    return resolve(RUN_ENTRY, profile), resolve(WAKE, profile), resolve(SET_MP_STATE, profile)


_ONLINE = [frozenset(range(n)) for n in range(64)]


def _state(value: int):
    """Named state when the value is one, the bare int otherwise (V1 stores anything)."""
    try:
        return MpState(value)
    except ValueError:
        return value


class VCpu:
    """One vCPU: KVM's per-vCPU state that the INIT/SIPI rules read or write, and its thread."""

    # A plain __dict__ (no __slots__): clone() copies it with one dict.copy().
    _KEY_FIELDS = (
        "apic_base",
        "xapic_id",
        "ldr",
        "dfr",
        "spiv",
        "pending_init",
        "pending_sipi",
        "sipi_vector",
        "smm",
        "smi_pending",
        "nmi_pending",
        "nmi_request",
        "pv_unhalted",
        "nested_block",
        "req_event",
        "waits_for_exit",
    )

    def copy(self) -> VCpu:
        c = VCpu.__new__(VCpu)
        d = self.__dict__.copy()
        d["regs"] = d["regs"].copy()
        c.__dict__ = d
        return c

    def key(self) -> tuple:
        """Hashable state. Enums become plain values: Enum.__hash__ is Python code, slow."""
        d = self.__dict__
        regs = d["regs"]
        exit_ = d["last_exit"]
        return (
            int(d["mp_state"]),
            int(d["phase"]),
            exit_ and exit_.value,
            *_key_fields(d),
            tuple(map(regs.__getitem__, _REG_ORDER)),
        )

    @property
    def in_run(self) -> bool:
        return self.phase != Phase.OUT

    @property
    def x2apic_mode(self) -> bool:
        return bool(self.apic_base & APIC_BASE_X2APIC)

    @property
    def hw_enabled(self) -> bool:
        """rule 6: only hardware-enabled LAPICs (IA32_APIC_BASE bit 11) are targets."""
        return bool(self.apic_base & APIC_BASE_ENABLE)

    @property
    def sw_enabled(self) -> bool:
        return bool(self.spiv & SPIV_ENABLE)

    @property
    def phys_id(self) -> int:
        return self.index if self.x2apic_mode else self.xapic_id

    def __repr__(self) -> str:
        st = _state(self.mp_state)
        name = st.name if isinstance(st, MpState) else str(st)
        pend = "".join(c for c, on in (("I", self.pending_init), ("S", self.pending_sipi)) if on)
        return (
            f"VCpu({self.index} {name} phase={self.phase.name} pending={pend or '-'} "
            f"vector={self.sipi_vector:#x} smm={int(self.smm)})"
        )


_key_fields = itemgetter(*VCpu._KEY_FIELDS)

# Operations an explorer may apply as steps (atomic_steps / apply). Maps op -> method name.
_OPS = {
    "icr_write": "icr_write",
    "signal_msi": "signal_msi",
    "get_mp_state": "get_mp_state",
    "set_mp_state": "set_mp_state",
    "get_regs": "get_regs",
    "get_sregs": "get_sregs",
    "get_vcpu_events": "get_vcpu_events",
    "set_vcpu_events": "set_vcpu_events",
    "set_lapic": "set_lapic",
    "lapic_write": "lapic_write",
    "set_apic_base": "set_apic_base",
    "enable_x2apic": "enable_x2apic",
    "set_regs": "set_regs",
    "set_sregs": "set_sregs",
    "smi": "smi",
    "rsm": "rsm",
    "nmi": "nmi",
    "pv_kick": "pv_kick",
    "guest_blocks_init": "guest_blocks_init",
    "run_entry": "_run_entry",
    "guest_runs": "guest_runs",
    "hlt_exit": "_hlt_exit",
    "emulate_halt": "_emulate_halt",
    "kick_out": "kick_out",
    "guest_event": "_guest_event",
    "wake": "_wake",
    "wake_uninit": "_wake_uninit",
}


# Steps that are guest instructions (need guest mode) and vCPU ioctls (need the thread out).
_GUEST_STEPS = frozenset({"guest_runs", "hlt_exit", "rsm", "guest_blocks_init"})
_IOCTL_STEPS = frozenset(
    {
        "get_mp_state",
        "set_mp_state",
        "get_regs",
        "get_sregs",
        "set_regs",
        "set_sregs",
        "get_vcpu_events",
        "set_vcpu_events",
        "set_lapic",
        "smi",
        "nmi",
        "run_entry",
    }
)


class Machine:
    """One VM with an in-kernel (or split, or no) irqchip, as a given kernel would run it."""

    def __init__(
        self,
        nr_vcpus: int = 2,
        profile: str | Profile = "mainline",
        flavour: str = "vmx",
        irqchip: str = "kernel",
        bsp: int = 0,
        cpuid_1_eax: int | None = None,
        smm: bool = True,
        x2apic_format: bool = False,
    ):
        self.profile = get_profile(profile)
        if flavour not in R.SEGMENT_TYPES:
            raise ModelError(f"unknown flavour {flavour!r}; known: vmx, svm, pvm")
        if irqchip not in ("kernel", "split", "none"):
            raise ModelError(f"irqchip must be kernel, split or none, not {irqchip!r}")
        if nr_vcpus < 1:
            raise ModelError("a VM needs at least one vCPU")
        # architecture.py: under a manual's profile the segment types are the manual's (VMX's).
        self.flavour = "vmx" if arch_value(self.profile, "manual_segment_types") else flavour
        # d.7.15 and d.7.16, facts of the vendor module, whatever the profile (a manual's too).
        self.defers_self_ipi = flavour == "pvm"
        self.has_nmi_window = flavour != "pvm"
        self.irqchip = irqchip
        self.lapic = irqchip != "none"  # split keeps the LAPIC in the kernel
        self.bsp_id = bsp
        self.cpuid_1_eax = cpuid_1_eax
        self.smm_supported = smm
        self.x2apic_format = x2apic_format
        self._run_entry_table, self._wake_table, self._set_mp_state_table = _tables(self.profile)
        self.vcpus: list[VCpu] = []
        self.map_members: frozenset[int] | None = frozenset() if self.lapic else None
        for _ in range(nr_vcpus):
            self.add_vcpu()

    # ------------------------------------------------------------------ creation and copying

    def add_vcpu(self) -> int:
        """KVM_CREATE_VCPU: rule 23 for the state, rule 33 for the APIC map."""
        i = len(self.vcpus)
        v = VCpu.__new__(VCpu)
        v.index = i
        is_bsp = i == self.bsp_id
        v.mp_state = RUN if (not self.lapic or is_bsp) else U  # rule 23
        v.apic_base = APIC_DEFAULT_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if is_bsp else 0)
        v.xapic_id = i & 0xFF
        v.ldr = 0
        v.dfr = enc.DFR_FLAT
        v.spiv = 0xFF
        v.pending_init = v.pending_sipi = False
        v.sipi_vector = 0  # rule 14: zero only because the LAPIC is zero-allocated
        v.smm = v.smi_pending = v.req_event = False
        v.nmi_pending = 0  # NMIs KVM holds: at most two (process_nmi), see _inject_nmi
        v.nmi_request = False  # KVM_REQ_NMI: set with every queued NMI, see _inject_nmi
        v.pv_unhalted = v.nested_block = False
        # kvm_pvm: an event pending in KVM waits for this vCPU's next VM exit (d.7.15, d.7.16)
        v.waits_for_exit = False
        v.phase = Phase.OUT
        v.last_exit = None
        v.regs = R.reset_image(
            self.profile.image, self.flavour, bsp=is_bsp, common=self.profile.common_reset_image
        )
        if arch_value(self.profile, "reset_rdx_signature") and self.cpuid_1_eax is not None:
            v.regs["rdx"] = self.cpuid_1_eax  # architecture.py: EDX = the signature at RESET
        if self.lapic:
            self._recalc_map()  # rule 33: kvm_lapic_reset recalculates before the vCPU is online
        self.vcpus.append(v)
        return i

    def clone(self) -> Machine:
        m = Machine.__new__(Machine)
        m.__dict__.update(self.__dict__)
        m.vcpus = [v.copy() for v in self.vcpus]
        return m

    def key(self) -> tuple:
        return (self.map_members, tuple(v.key() for v in self.vcpus))

    # ------------------------------------------------------------------ helpers

    def _v(self, vcpu: int) -> VCpu:
        if not isinstance(vcpu, int) or not 0 <= vcpu < len(self.vcpus):
            raise ModelError(f"no vCPU {vcpu!r}")
        return self.vcpus[vcpu]

    def _ioctl(self, vcpu: int, name: str) -> VCpu:
        v = self._v(vcpu)
        if v.phase != Phase.OUT:
            raise ModelError(
                f"{name} on vCPU {vcpu} while its thread is inside KVM_RUN would block "
                "(docs/host-findings.md#finding-2): kick_out first"
            )
        return v

    def is_bsp(self, vcpu: int) -> bool:
        """rule 11: the BSP bit of IA32_APIC_BASE (4.1+) or vcpu_id == bsp_vcpu_id (V1/V2)."""
        v = self._v(vcpu)
        if self.profile.bsp_by_apic_base:
            return bool(v.apic_base & APIC_BASE_BSP)
        return v.index == self.bsp_id

    def init_allowed(self, v: VCpu) -> bool:
        """rules 15-16: kvm_apic_init_sipi_allowed: not in SMM, not in VMX root operation or
        with GIF = 0 (``guest_blocks_init``)."""
        p = self.profile
        return not ((p.init_blocked_in_smm and v.smm) or (p.init_blocked_nested and v.nested_block))

    def _has_init_sipi(self, v: VCpu) -> bool:
        """rule 18: pending INIT/SIPI count as events (6.1+: only when allowed)."""
        if not (v.pending_init or v.pending_sipi):
            return False
        return self.init_allowed(v) or not self.profile.runnable_needs_init_allowed

    def _has_events(self, v: VCpu) -> bool:
        """kvm_vcpu_has_events, restricted to the modelled events."""
        if self._has_init_sipi(v) or v.nmi_pending or v.nmi_request:
            return True
        return self.profile.smm_emulation and v.smi_pending and not v.smm

    def runnable(self, v: VCpu) -> bool:
        """kvm_arch_vcpu_runnable: what ends kvm_vcpu_block."""
        if self.profile.sender_writes_mp_state:
            return v.mp_state in (RUN, SR) or v.nmi_pending  # a.1
        return v.mp_state == RUN or v.pv_unhalted or self._has_events(v)  # rule 18

    # ------------------------------------------------------------------ target-side processing

    def _lapic_reset(self, v: VCpu) -> None:
        """kvm_lapic_reset on INIT (and V1's SIPI reset): LVT/LDR/DFR/SPIV; the DFR write
        dirties the APIC map, which is then recalculated over every online vCPU (rule 34)."""
        if self.profile.init_resets_apic_base_and_id:  # d.7.9 (V1/V2)
            v.xapic_id = v.index & 0xFF
            if self.flavour != "svm":  # c.3: VMX re-writes APIC_BASE; SVM does not (UNVERIFIED)
                is_bsp = v.index == self.bsp_id
                v.apic_base = (
                    APIC_DEFAULT_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if is_bsp else 0)
                )
        v.dfr = enc.DFR_FLAT
        v.spiv = 0xFF
        if not v.x2apic_mode:
            v.ldr = 0
        self._recalc_map()

    def _set_runnable(self, v: VCpu) -> None:
        """kvm_set_mp_state(R): from 6.15 it also clears pv_unhalted (rule 21)."""
        v.mp_state = RUN
        if self.profile.runnable_clears_pv_unhalted:
            v.pv_unhalted = False

    def _init_reset(self, v: VCpu) -> None:
        """rule 10: kvm_vcpu_reset(init_event=true) and the resulting state."""
        v.regs = R.init_image(
            self.profile.image,
            self.flavour,
            v.regs,
            cpuid_1_eax=self.cpuid_1_eax,
            common=self.profile.common_reset_image,
        )
        v.nmi_pending = 0  # c.1: pending NMI and SMI cleared
        v.smi_pending = False
        self._lapic_reset(v)
        new = ACCEPT_INIT["BSP" if self.is_bsp(v.index) else "AP"]  # rules 10, 11
        if new == RUN:
            self._set_runnable(v)
        else:
            v.mp_state = new

    def _accept_events(self, v: VCpu) -> None:
        """kvm_apic_accept_events (pending events, not sender_writes_mp_state): INIT before SIPI
        (rule 9)."""
        if not self.lapic or not (v.pending_init or v.pending_sipi):
            return
        if not self.init_allowed(v):
            v.pending_sipi = False  # rules 15, 17: SIPI dropped, INIT stays latched
            return
        if v.pending_init:
            v.pending_init = False
            self._init_reset(v)
        if v.pending_sipi:
            v.pending_sipi = False
            new = ACCEPT_SIPI.get(v.mp_state, ACCEPT_SIPI[ANY])
            if v.mp_state == U and arch_value(self.profile, "sipi_starts_reset_ap"):
                new = RUN  # architecture.py: after RESET an AP waits for a SIPI
            if new is not KEEP:  # rule 12: elsewhere dropped, sipi_vector kept
                R.sipi_fixup(v.regs, v.sipi_vector)  # rule 13
                self._set_runnable(v)

    # ------------------------------------------------------------------ delivery

    def _accept_irq(self, v: VCpu, irq: enc.Irq) -> int:
        """__apic_accept_irq for one target: returns the count (rules 1-5, 7)."""
        dm = irq.delivery_mode
        if dm == enc.DM_INIT:
            if irq.trig_level and not irq.level:
                return 0  # rule 2: level de-assert ignored
            if self.profile.sender_writes_mp_state:
                new, count = SENDER_WRITES["INIT"][ANY]  # rule 1 (V1)
                v.mp_state = new
            else:
                count = SENDER_PENDING["INIT"][1]
                v.pending_init = True  # rule 1
                v.pending_sipi = False
            v.req_event = True  # rule 7
            return count
        if dm == enc.DM_STARTUP:
            if self.profile.sender_writes_mp_state:
                row = SENDER_WRITES["SIPI"]
                new, count = row.get(v.mp_state, row[ANY])  # rule 3 (V1)
                if new is not KEEP:
                    v.sipi_vector = irq.vector
                    v.mp_state = new
                    v.req_event = True
                return count
            if self._arch_ignores_sipi(v):
                return SENDER_PENDING["SIPI"][1]  # the count is KVM ABI, unspecified there
            v.sipi_vector = irq.vector  # rules 3, 4, 14
            v.pending_sipi = True
            v.req_event = True  # rule 7
            return SENDER_PENDING["SIPI"][1]
        if dm == enc.DM_NMI:
            self._inject_nmi(v)
            return 1
        if dm == enc.DM_SMI:
            if self.profile.smm_emulation and self.smm_supported:
                v.smi_pending = True
                v.req_event = True
                return 1
            return 0
        if dm in (enc.DM_FIXED, enc.DM_LOWEST):
            # rule 5: dropped while software-disabled. Accepted fixed interrupts are counted
            # only: IRR and the IF-dependent wake-up from HLT are not modelled.
            return 1 if v.sw_enabled else 0
        if dm == enc.DM_REMRD and self.profile.pv_unhalt:
            v.pv_unhalted = True  # KVM_HC_KICK_CPU is delivered as REMRD (rules 21, 22, 24)
            v.req_event = True
            return 1
        return 0  # EXTINT (and REMRD before PV unhalt): ignored by __apic_accept_irq

    def _arch_ignores_sipi(self, v: VCpu) -> bool:
        """architecture.py, under a manual's profile only: a SIPI is taken at once by a
        processor in wait-for-SIPI (IR; U for sipi_starts_reset_ap; an AP whose INIT is still
        pending here, as the INIT would already have been taken), which then runs; any other
        processor ignores it, and so does one whose first SIPI is still pending here."""
        p = self.profile
        wfs = v.mp_state == IR or (v.mp_state == U and arch_value(p, "sipi_starts_reset_ap"))
        if v.pending_init and self.init_allowed(v):
            wfs = not self.is_bsp(v.index)
        if not wfs:
            return arch_value(p, "sipi_outside_wfs_ignored")
        return v.pending_sipi and arch_value(p, "first_sipi_wins")

    def _lowest_prio(self, irq: enc.Irq) -> bool:
        return irq.delivery_mode == enc.DM_LOWEST or (
            self.profile.msi_redir_hint and irq.redir_hint
        )

    def _match(self, t: VCpu, src: VCpu | None, irq: enc.Irq) -> bool:
        """rule 41: kvm_apic_match_dest."""
        sh = irq.shorthand
        if sh == enc.SH_SELF:
            return t is src
        if sh == enc.SH_ALL:
            return True
        if sh == enc.SH_ALL_BUT_SELF:
            return t is not src
        mda = irq.dest_id
        if src is None and mda == enc.XAPIC_BROADCAST and t.x2apic_mode:
            mda = enc.X2APIC_BROADCAST  # kvm_apic_mda: non-IPI 0xff is a broadcast in x2APIC
        if irq.logical:
            return enc.match_logical(mda, t.ldr, t.dfr, t.x2apic_mode)
        return enc.match_physical(mda, t.xapic_id, t.index, t.x2apic_mode)

    def _slow_path(self, src: VCpu | None, irq: enc.Irq) -> int:
        """rule 35: walk every online, present LAPIC; -1 when nothing matched. A physical
        broadcast asked for lowest priority is delivered as fixed first (kvm_irq_delivery_to_apic,
        every kernel generation), so a lowest-priority broadcast reaches every APIC."""
        if not irq.logical and irq.dest_id == enc.XAPIC_BROADCAST and self._lowest_prio(irq):
            irq = irq._replace(delivery_mode=enc.DM_FIXED)
        targets = [t for t in self.vcpus if t.hw_enabled and self._match(t, src, irq)]
        if not targets:
            return -1
        if self._lowest_prio(irq):
            # One target; KVM arbitrates by priority among software-enabled APICs. The model
            # picks the lowest vCPU index (UNVERIFIED arbitration).
            enabled = [t for t in targets if t.sw_enabled]
            # kvm_irq_delivery_to_apic: r stays -1 when no software-enabled candidate exists
            return self._accept_irq(enabled[0], irq) if enabled else -1
        return sum(self._accept_irq(t, irq) for t in targets)

    def _fast_targets(self, src: VCpu | None, irq: enc.Irq):
        """rule 35: kvm_apic_map_get_dest_lapic. Returns a target list, or None for the slow
        path. The map is evaluated from the members' current registers, which is what the
        kernel's map holds because every ID/LDR/DFR/enable change recalculates it (rule 34)."""
        if self.map_members is None:
            return None
        x2apic_ipi = src is not None and src.x2apic_mode
        if irq.dest_id == (enc.X2APIC_BROADCAST if x2apic_ipi else enc.XAPIC_BROADCAST):
            return None  # broadcast
        members = [v for v in self.vcpus if v.index in self.map_members and v.hw_enabled]
        ids = [m.phys_id for m in members]
        if len(set(ids)) != len(ids):
            return None  # conflicting IDs: no map (UNVERIFIED for 3.x)
        if not irq.logical:
            dest = irq.dest_id & self.profile.phys_dest_mask  # rule 35
            return [m for m in members if m.phys_id == dest]
        # Logical: only software-enabled APICs with a non-zero LDR are in the logical map.
        logical = [m for m in members if m.sw_enabled and (m.ldr if m.x2apic_mode else m.ldr >> 24)]
        modes = {("x2" if m.x2apic_mode else m.dfr) for m in logical}
        if len(modes) > 1:
            return None  # mixed modes: map disabled
        if not modes:
            # rule 37: KVM_APIC_MODE_SW_DISABLED, nobody (from 6.3); before, the fast path
            # gave up on the unoptimised map and the slow path matched nobody either.
            return [] if self.profile.logical_map_tracks_sw_disabled else None
        if modes == {"x2"} and self.profile.logical_map_tracks_sw_disabled:
            # rule 37: in x2APIC mode the cluster is looked up in the *physical* map
            # (kvm_apic_map_get_logical_dest), which holds software-disabled APICs too.
            offset, mask = (irq.dest_id >> 16) * 16, irq.dest_id & 0xFFFF
            return [
                m
                for m in members
                if offset <= m.phys_id < offset + 16 and mask >> (m.phys_id - offset) & 1
            ]
        if "x2" not in modes:
            # One APIC per logical bit (flat) or per cluster bit, else the map is disabled.
            seen = set()
            for m in logical:
                lid = (m.ldr >> 24) & 0xFF
                mask = lid & 0xF if m.dfr == enc.DFR_CLUSTER else lid  # rule 43
                if mask & (mask - 1):
                    return None
                slot = (lid >> 4, lid & 0xF) if m.dfr == enc.DFR_CLUSTER else lid
                if slot in seen:
                    return None
                seen.add(slot)
        return [m for m in logical if self._match(m, src, irq)]

    def _deliver(self, irq: enc.Irq, src: VCpu | None) -> int:
        """kvm_irq_delivery_to_apic: the fast path, else the slow path (rule 35)."""
        if irq.shorthand == enc.SH_SELF:
            return self._accept_irq(src, irq) if src is not None else 0
        if irq.shorthand == enc.SH_NONE:
            targets = self._fast_targets(src, irq)
            if targets is not None:
                if not targets:
                    return self.profile.fast_path_empty_result  # d.4 (V1/V2: -1, V3: 0)
                if self._lowest_prio(irq):
                    return self._accept_irq(targets[0], irq)  # UNVERIFIED arbitration
                return sum(self._accept_irq(t, irq) for t in targets)
        return self._slow_path(src, irq)

    def icr_write(self, sender: int, icr: int, x2apic: bool):
        """A guest write of the ICR (rule 40): xAPIC icr = (ICR2 << 32) | ICR (the write of the
        low word sends); x2APIC the 64-bit WRMSR 0x830 value. Returns the delivery count, or
        "#GP" for a WRMSR the kernel refuses."""
        s = self._v(sender)
        if not self.lapic:
            raise ModelError("no in-kernel LAPIC: the ICR write goes to userspace")
        if x2apic:
            if not s.x2apic_mode:
                return "#GP"  # x2APIC MSRs fault outside x2APIC mode
            if self.profile.x2apic_icr_reserved_gp and enc.x2apic_icr_reserved(icr):
                return "#GP"  # rule 40
        elif s.x2apic_mode:
            return 0  # xAPIC MMIO is not decoded in x2APIC mode (UNVERIFIED: no IPI)
        before = (s.pending_init, s.pending_sipi, s.sipi_vector, s.nmi_pending)
        count = self._deliver(enc.decode_icr(icr, x2apic), s)
        if self.defers_self_ipi and s.phase == Phase.GUEST:
            if (s.pending_init, s.pending_sipi, s.sipi_vector, s.nmi_pending) != before:
                s.waits_for_exit = True  # d.7.15: the guest runs on to its exit to userspace
        return count

    def signal_msi(self, address_lo: int, address_hi: int, data: int) -> int:
        """KVM_SIGNAL_MSI (rules 38, 39): the count, -1 for EPERM, -22 for EINVAL."""
        if not self.lapic:
            return EINVAL  # d.4: no in-kernel irqchip
        x2apic_format = self.x2apic_format and self.profile.x2apic_api
        if enc.msi_invalid(address_hi, x2apic_format):
            return EINVAL  # rule 39
        irq = enc.decode_msi(address_lo, address_hi, data, x2apic_format)
        return self._deliver(irq, None)

    # ------------------------------------------------------------------ LAPIC and APIC base

    def _recalc_map(self) -> None:
        """kvm_recalculate_apic_map: members are the vCPUs online now (rules 33, 34)."""
        self.map_members = (
            _ONLINE[len(self.vcpus)]
            if len(self.vcpus) < 64
            else (frozenset(range(len(self.vcpus))))
        )

    def set_lapic(self, vcpu: int, apic_id=None, ldr=None, dfr=None, spiv=None) -> int:
        """KVM_SET_LAPIC with the given registers (others as they are): always recalculates the
        APIC map, which enrols every vCPU (rule 34); pending events untouched (d.6)."""
        v = self._ioctl(vcpu, "KVM_SET_LAPIC")
        if not self.lapic:
            return EINVAL
        if v.x2apic_mode:
            if apic_id is not None and apic_id != v.index and self.x2apic_format:
                self._recalc_map()
                return EINVAL  # rule 36
        elif apic_id is not None:
            v.xapic_id = apic_id & 0xFF  # rule 36: the blob's ID routes
        if ldr is not None and not v.x2apic_mode:
            v.ldr = ldr
        if dfr is not None:
            v.dfr = dfr
        if spiv is not None:
            v.spiv = spiv
        self._recalc_map()  # rule 34
        return 0

    def get_lapic(self, vcpu: int) -> dict:
        """KVM_GET_LAPIC, the registers routing depends on, as the register page holds them: ID
        (xAPIC: the ID in bits 31:24; x2APIC: the same unless KVM_X2APIC_API_USE_32BIT_IDS),
        LDR, DFR and SPIV. No side effects."""
        v = self._ioctl(vcpu, "KVM_GET_LAPIC")
        if v.x2apic_mode:  # kvm_apic_state_fixup: the legacy format shifts the x2APIC ID too
            raw_id = v.index if self.x2apic_format else (v.index << 24) & 0xFFFFFFFF
        else:
            raw_id = v.xapic_id << 24
        return {
            "id": raw_id,
            "ldr": v.ldr,
            "dfr": v.dfr,
            "spiv": v.spiv,
        }

    def get_apic_base(self, vcpu: int) -> int:
        """KVM_GET_MSRS of IA32_APIC_BASE."""
        return self._ioctl(vcpu, "KVM_GET_MSRS").apic_base

    def lapic_write(self, vcpu: int, reg: str, value: int) -> None:
        """A guest write of an xAPIC register that routing depends on: "id", "ldr", "dfr",
        "spiv". ID/LDR/DFR writes (and, 6.1+, SPIV enable toggles) recalculate the map."""
        v = self._v(vcpu)
        if reg == "id":
            v.xapic_id = (value >> 24) & 0xFF
        elif reg == "ldr":
            v.ldr = value & 0xFF000000
        elif reg == "dfr":
            v.dfr = value | 0x0FFFFFFF
        elif reg == "spiv":
            toggled = (v.spiv ^ value) & SPIV_ENABLE
            v.spiv = value
            if not (toggled and self.profile.spiv_toggle_dirties_map):
                return
        else:
            raise ModelError(f"unknown LAPIC register {reg!r}")
        self._recalc_map()  # rule 34

    def set_apic_base(self, vcpu: int, value: int) -> int:
        """IA32_APIC_BASE write (KVM_SET_MSRS / KVM_SET_SREGS.apic_base): 0, or -22 for a
        value KVM refuses. Enable/x2APIC changes re-set the IDs and recalculate the map."""
        v = self._v(vcpu)
        if value & 0x2FF or (value & APIC_BASE_X2APIC and not value & APIC_BASE_ENABLE):
            return EINVAL  # reserved bits / invalid mode
        changed = v.apic_base ^ value
        v.apic_base = value
        if changed & (APIC_BASE_ENABLE | APIC_BASE_X2APIC) and self.lapic:
            if value & APIC_BASE_X2APIC:
                v.ldr = enc.x2apic_ldr(v.index)
            elif value & APIC_BASE_ENABLE:
                v.xapic_id = v.index & 0xFF
            self._recalc_map()  # rule 34
        return 0

    def enable_x2apic(self, vcpu: int) -> int:
        """The guest (or the host) sets IA32_APIC_BASE bits 10 and 11."""
        v = self._v(vcpu)
        return self.set_apic_base(vcpu, v.apic_base | APIC_BASE_ENABLE | APIC_BASE_X2APIC)

    # ------------------------------------------------------------------ mp_state ioctls

    def get_mp_state(self, vcpu: int) -> int:
        """KVM_GET_MP_STATE: processes pending events first from 3.10 on (rule 24, d.7.4)."""
        v = self._ioctl(vcpu, "KVM_GET_MP_STATE")
        if self.profile.get_mp_state_processes and self.lapic:
            self._accept_events(v)  # rule 24
        if v.pv_unhalted and v.mp_state in (H, ARH):
            return RUN  # rule 24: H and ARH reported as R when pv_unhalted
        return _state(v.mp_state)

    def set_mp_state(self, vcpu: int, value: int) -> int:
        """KVM_SET_MP_STATE: 0 or -22 (rules 25-28, d.2). Never touches registers (rule 26)
        or pending events (rule 27); raises KVM_REQ_EVENT."""
        v = self._ioctl(vcpu, "KVM_SET_MP_STATE")
        p = self.profile
        wl = p.set_mp_state_whitelist
        if wl is not None and value not in wl:
            return EINVAL  # rule 28 (6.0+); V1 stores anything (d.2)
        row = self._set_mp_state_table.get(value, (True, _state(value), False))
        needs_lapic, new, add_sipi = row
        if needs_lapic and p.set_mp_state_needs_lapic and not self.lapic:
            return EINVAL  # rule 28 (P)
        if (
            p.set_mp_state_rejects_wfs_when_blocked
            and value in (IR, SR)
            and (not self.init_allowed(v) or v.smi_pending)
        ):
            return EINVAL  # rule 28 (to 6.16)
        if new == RUN:
            self._set_runnable(v)
        else:
            v.mp_state = new
        if add_sipi:
            v.pending_sipi = True  # rule 25
        v.req_event = True
        return 0

    # ------------------------------------------------------------------ register ioctls

    def get_regs(self, vcpu: int) -> dict:
        """KVM_GET_REGS: no side effects (rule 8, d.7.4)."""
        r = self._ioctl(vcpu, "KVM_GET_REGS").regs
        return {"rip": r["rip"], "rflags": r["rflags"], "rdx": r["rdx"]}

    def get_sregs(self, vcpu: int) -> dict:
        """KVM_GET_SREGS: no side effects (rule 8, d.7.4)."""
        v = self._ioctl(vcpu, "KVM_GET_SREGS")
        r = v.regs
        out = {name: R.segment_dict(r[name]) for name in R.SEGMENTS}
        out["gdt"] = R.dtable_dict(r["gdt"])
        out["idt"] = R.dtable_dict(r["idt"])
        out["cr0"] = r["cr0"]
        out["apic_base"] = v.apic_base
        return out

    def set_regs(self, vcpu: int, **values) -> int:
        """KVM_SET_REGS for rip, rflags, rdx."""
        v = self._ioctl(vcpu, "KVM_SET_REGS")
        for name, value in values.items():
            if name not in R.GPRS:
                raise ModelError(f"set_regs: unknown register {name!r}")
            v.regs[name] = value
        return 0

    def set_sregs(self, vcpu: int, **values) -> int:
        """KVM_SET_SREGS for segments (dict or Segment), gdt/idt, cr0 and apic_base. On the BSP,
        the reset CS with RIP at the reset vector in real mode makes it RUNNABLE (rule 42)."""
        v = self._ioctl(vcpu, "KVM_SET_SREGS")
        if "apic_base" in values:
            r = self.set_apic_base(vcpu, values.pop("apic_base"))
            if r:
                return r
        for name, value in values.items():
            if name in R.SEGMENTS:
                v.regs[name] = value if isinstance(value, R.Segment) else R.Segment(**value)
            elif name in R.DTABLES:
                v.regs[name] = value if isinstance(value, R.DTable) else R.DTable(**value)
            elif name == "cr0":
                v.regs["cr0"] = value
            else:
                raise ModelError(f"set_sregs: unknown field {name!r}")
        cs, cr0 = v.regs["cs"], v.regs["cr0"]
        if (
            self.is_bsp(vcpu)
            and v.regs["rip"] == R.RESET_RIP
            and (cs.selector, cs.base) == (R.RESET_CS_SELECTOR, R.RESET_CS_BASE)
            and cr0 is not R.GUEST
            and not cr0 & R.CR0_PE
        ):
            self._set_runnable(v)  # rule 42: "older userspace won't unhalt the vcpu on reset"
        return 0

    # ------------------------------------------------------------------ vCPU events, SMM, NMI

    def get_vcpu_events(self, vcpu: int) -> dict:
        """KVM_GET_VCPU_EVENTS: sipi_vector always 0 (rule 30); smi.latched_init = the pending
        INIT bit (rule 31, d.7.14). No side effects."""
        v = self._ioctl(vcpu, "KVM_GET_VCPU_EVENTS")
        smm_api = bool(self.profile.vcpu_events_flags & VALID_SMM)
        flags = VALID_NMI_PENDING | VALID_SHADOW | (VALID_SMM if smm_api else 0)
        return {
            "flags": flags,
            "nmi_pending": int(v.nmi_pending > 0),  # the ABI has a flag, not a count
            "sipi_vector": 0,  # rule 30
            "smi": {
                "smm": int(v.smm and smm_api),
                "pending": int(v.smi_pending and smm_api),
                "latched_init": int(v.pending_init and smm_api),  # rule 31
            },
        }

    def set_vcpu_events(
        self,
        vcpu: int,
        flags: int = 0,
        sipi_vector: int | None = None,
        smm: int | None = None,
        smi_pending: int | None = None,
        latched_init: int | None = None,
        nmi_pending: int | None = None,
    ) -> int:
        """KVM_SET_VCPU_EVENTS (d.5, rules 30-32). Fields not covered by a flag are ignored,
        as the kernel ignores them; a None field reads as 0."""
        v = self._ioctl(vcpu, "KVM_SET_VCPU_EVENTS")
        p = self.profile
        smm_v, pend_v, init_v = bool(smm), bool(smi_pending), bool(latched_init)
        if flags & ~p.vcpu_events_flags:
            return EINVAL
        if flags & VALID_SMM:
            if p.vcpu_events_rejects_smm_in_ir and (smm_v or pend_v) and v.mp_state == IR:
                return EINVAL  # d.5 (to 6.16)
        if flags & VALID_NMI_PENDING:
            v.nmi_pending = int(bool(nmi_pending))
        if flags & VALID_SIPI_VECTOR and self.lapic:
            v.sipi_vector = (sipi_vector or 0) & 0xFF  # rule 30
        if flags & VALID_SMM:
            if not self.smm_supported and (smm_v or pend_v):
                # d.5: no SMM. Refused only here, after the NMI and SIPI fields took effect:
                # observed on this host (kvmtest fuzz, seed 8, trace 1194: a pending SIPI then
                # landed on the refused call's vector); the kernel line refusing is unchecked.
                return EINVAL
            if v.smm != smm_v:
                v.smm = smm_v  # rule 32: kvm_smm_changed; KVM_REQ_EVENT below
            v.smi_pending = pend_v
            if self.lapic:
                v.pending_init = init_v  # rule 31: injects or cancels an INIT
        v.req_event = True
        return 0

    def smi(self, vcpu: int) -> int:
        """KVM_SMI: 0, -22 before 4.2, -25 (ENOTTY) without SMM support (UNVERIFIED)."""
        v = self._ioctl(vcpu, "KVM_SMI")
        if not self.profile.smm_emulation:
            return EINVAL
        if not self.smm_supported:
            return ENOTTY
        v.smi_pending = True
        v.req_event = True
        return 0

    def pv_kick(self, sender: int, dest_apic_id: int) -> int:
        """The guest's KVM_HC_KICK_CPU hypercall: a REMRD IPI that sets pv_unhalted (3.12+)."""
        if not self.profile.pv_unhalt:
            raise ModelError(f"{self.profile.name} has no PV unhalt (KVM_HC_KICK_CPU)")
        irq = enc.Irq(0, enc.DM_REMRD, False, False, False, enc.SH_NONE, dest_apic_id)
        return self._deliver(irq, self._v(sender))

    def guest_blocks_init(self, vcpu: int, blocked: bool) -> None:
        """The guest enters (VMXON, CLGI) or leaves (VMXOFF, STGI) a state that latches INIT
        (rule 16). Leaving it raises KVM_REQ_EVENT if INIT/SIPI is pending (6.1 commits)."""
        v = self._v(vcpu)
        if v.phase != Phase.GUEST:
            raise ModelError(f"vCPU {vcpu} is not running guest code ({v!r})")
        v.nested_block = blocked
        if not blocked and (v.pending_init or v.pending_sipi):
            v.req_event = True

    def nmi(self, vcpu: int) -> int:
        """KVM_NMI: queue an NMI and request event processing."""
        v = self._ioctl(vcpu, "KVM_NMI")
        self._inject_nmi(v)
        return 0

    @staticmethod
    def _inject_nmi(v: VCpu) -> None:
        """kvm_inject_nmi: nmi_queued++ and KVM_REQ_NMI; process_nmi keeps at most two pending
        (d.7.16). An INIT reset clears the queued NMIs but not the request, which only guest
        entry (vcpu_enter_guest) takes: until then kvm_vcpu_has_events still sees it (rule 18)."""
        v.nmi_pending = min(v.nmi_pending + 1, 2)
        v.nmi_request = True
        v.req_event = True

    def rsm(self, vcpu: int) -> None:
        """The guest leaves SMM (RSM): registers come from SMRAM (GUEST); kvm_smm_changed raises
        KVM_REQ_EVENT so a latched INIT is processed next (rules 15, 32)."""
        v = self._v(vcpu)
        if v.phase != Phase.GUEST or not v.smm:
            raise ModelError(f"vCPU {vcpu} cannot execute RSM: not running guest code in SMM")
        v.smm = False
        R.guest_ran(v.regs)
        v.req_event = True

    # ------------------------------------------------------------------ the vCPU thread

    def enter_run(self, vcpu: int, immediate_exit: bool = False) -> RunResult:
        """The thread calls KVM_RUN. Performs ``run_entry`` and then whatever the thread does
        by itself; returns RUNS, BLOCKED or the ioctl's error (the thread is then out)."""
        v = self._v(vcpu)
        self._run_entry(vcpu, immediate_exit)
        self._settle_vcpu(v)
        return self.run_status(vcpu)

    def run_status(self, vcpu: int) -> RunResult:
        """RUNS / BLOCKED while the thread is inside KVM_RUN, else how KVM_RUN returned."""
        v = self._v(vcpu)
        if v.phase == Phase.GUEST:
            return RunResult.RUNS
        if v.phase in (Phase.BLOCKED, Phase.U_BLOCK, Phase.HALT_EXIT):
            return RunResult.BLOCKED
        return v.last_exit

    def _leave(self, v: VCpu, result: RunResult) -> RunResult:
        v.phase = Phase.OUT
        v.waits_for_exit = False
        v.last_exit = result
        return result

    def _run_entry(self, vcpu: int, immediate_exit: bool = False) -> RunResult:
        """Atomic step: KVM_RUN entry (d.3), up to entering the guest or the first block."""
        v = self._v(vcpu)
        if v.phase != Phase.OUT:
            raise ModelError(f"vCPU {vcpu}: KVM_RUN while its thread is already inside it")
        if immediate_exit and not self.profile.immediate_exit:
            raise ModelError("KVM_CAP_IMMEDIATE_EXIT does not exist in this profile's kernel")
        if not self.lapic:
            if immediate_exit:
                return self._leave(v, RunResult.EINTR)
            v.phase = Phase.GUEST
            return RunResult.RUNS
        table = self._run_entry_table
        action = table.get(v.mp_state, table[ANY])
        p = self.profile
        if action == "block_u":
            if immediate_exit and p.run_u_reports_signal:
                return self._leave(v, RunResult.EINTR)  # rule 29 (about 4.14)
            v.phase = Phase.U_BLOCK
            return RunResult.BLOCKED
        if immediate_exit:
            return self._leave(v, RunResult.EINTR)  # d.3: before kvm_x86_vcpu_pre_run
        if action == "check_blocked_ir":
            if not self.init_allowed(v):
                return self._leave(v, RunResult.EINVAL)  # d.3 (6.17, kvm_x86_vcpu_pre_run)
            action = "block"
        elif action == "einval":
            return self._leave(v, RunResult.EINVAL)  # d.3 (6.17, SR: WARN_ON_ONCE)
        if action == "sipi_reset":
            # a.1/c.4: V1 resets from SIPI_RECEIVED at __vcpu_run entry, then runs.
            is_bsp = self.is_bsp(vcpu)
            v.regs = R.v1_sipi_image(
                self.flavour, v.regs, bsp=is_bsp, vector=v.sipi_vector, cpuid_1_eax=self.cpuid_1_eax
            )
            v.nmi_pending = 0
            self._lapic_reset(v)
            v.mp_state = RUN
            action = "run"
        if action == "run":
            v.phase = Phase.GUEST
            return RunResult.RUNS
        v.phase = Phase.BLOCKED
        return RunResult.BLOCKED

    def guest_runs(self, vcpu: int) -> None:
        """The guest executed code: every register it owns becomes GUEST (design.md).
        Only while the thread is in guest mode (in V1 mp_state may already read IR then: the
        sender wrote it and the kick has not been handled yet)."""
        v = self._v(vcpu)
        if v.phase != Phase.GUEST:
            raise ModelError(f"vCPU {vcpu} is not running guest code ({v!r})")
        R.guest_ran(v.regs)

    def guest_hlt(self, vcpu: int) -> None:
        """The guest executes HLT: ``hlt_exit`` then ``emulate_halt`` (rule 22)."""
        self._hlt_exit(vcpu)
        self._emulate_halt(vcpu)

    def _hlt_exit(self, vcpu: int) -> None:
        """Atomic step: the HLT VM exit; handle_halt is about to call kvm_emulate_halt."""
        v = self._v(vcpu)
        if v.phase != Phase.GUEST:
            raise ModelError(f"vCPU {vcpu} cannot execute HLT: not running guest code ({v!r})")
        R.guest_ran(v.regs)  # the guest ran up to the HLT
        v.phase = Phase.HALT_EXIT
        v.waits_for_exit = False  # d.7.16: a VM exit; re-entry processes what waited

    def _emulate_halt(self, vcpu: int) -> None:
        """Atomic step: kvm_emulate_halt writes mp_state (rule 22); V1/V2 unconditionally."""
        v = self._v(vcpu)
        if v.phase != Phase.HALT_EXIT:
            raise ModelError(f"vCPU {vcpu}: emulate_halt without a HLT exit")
        if not self.lapic:
            self._leave(v, RunResult.EXIT_HLT)  # userspace emulates HLT
            return
        pending = self._has_events(v) or v.pv_unhalted
        new = HLT[self.profile.hlt_checks_pending_events][pending]  # rule 22
        if new == RUN:
            self._set_runnable(v)
        else:
            v.mp_state = new
        # __vcpu_run / vcpu_run loop: R re-enters the guest, anything else blocks.
        v.phase = Phase.GUEST if v.mp_state == RUN else Phase.BLOCKED

    def kick_out(self, vcpu: int):
        """A signal plus immediate_exit: the thread leaves KVM_RUN (KVM_EXIT_INTR), state kept.
        In the UNINITIALIZED branch the kernel still processes events (rule 29). Returns how
        KVM_RUN ended (or the previous result if the thread was already out)."""
        v = self._v(vcpu)
        if v.phase == Phase.OUT:
            return v.last_exit
        if v.phase == Phase.HALT_EXIT:
            self._emulate_halt(vcpu)  # the exit handler finishes before the signal is seen
            if v.phase == Phase.OUT:
                return v.last_exit
        if v.phase == Phase.U_BLOCK:
            # A thread that loops through KVM_RUN (rule 18) is mostly in userspace between two
            # of them, where the kick stops it before the next: nothing is processed then
            # (seed 25, trace 20553; kvm_amd too). If it takes its next KVM_RUN first, that
            # is the wake_uninit reaction, which the explorer orders before the kick.
            if self.profile.run_u_processes_events and not self._loops_in_u(v):
                self._accept_events(v)
            if self.profile.run_u_reports_signal:
                return self._leave(v, RunResult.EINTR)
            return self._leave(v, RunResult.EAGAIN)
        return self._leave(v, RunResult.EINTR)

    # ------------------------------------------------------------------ reactions

    def _guest_event_enabled(self, v: VCpu) -> bool:
        if v.req_event or v.nmi_pending or v.nmi_request:
            return True
        return self.profile.smm_emulation and v.smi_pending and not v.smm

    def _wake_enabled(self, v: VCpu) -> bool:
        if not self.runnable(v):
            return False
        if self.profile.sender_writes_mp_state or v.mp_state != IR:
            return True
        # In IR only a pending, allowed INIT/SIPI changes anything (else the kernel spins).
        return (v.pending_init or v.pending_sipi) and self.init_allowed(v)

    def pending_steps(self) -> list[tuple[int, str]]:
        """The enabled reactions of threads inside KVM_RUN, as (vcpu, step_name)."""
        out = []
        for v in self.vcpus:
            ph = v.phase
            if ph == Phase.GUEST:
                if v.waits_for_exit:
                    out.append((v.index, "exit_event"))  # d.7.15/16: only if the guest exits
                elif self._guest_event_enabled(v):
                    out.append((v.index, "guest_event"))
            elif ph == Phase.BLOCKED:
                if self._wake_enabled(v):
                    out.append((v.index, "wake"))
            elif ph == Phase.U_BLOCK:
                if self._uninit_wake_enabled(v):
                    out.append((v.index, "wake_uninit"))
        return out

    def _uninit_wake_enabled(self, v: VCpu) -> bool:
        if not self.runnable(v):
            return False
        if self.profile.sender_writes_mp_state:
            return True
        # Only a pending INIT/SIPI is consumed there; an NMI, an SMI or PV-unhalt alone makes
        # KVM_RUN return -EAGAIN at once, every time: the thread spins (see spins()).
        return v.pending_init or v.pending_sipi

    def _loops_in_u(self, v: VCpu) -> bool:
        """In UNINITIALIZED with an event that no INIT/SIPI processing takes (an NMI, an SMI, a
        PV kick): every KVM_RUN returns -EAGAIN at once and userspace re-enters (rule 18)."""
        if self.profile.sender_writes_mp_state:
            return bool(v.nmi_pending)
        smi = self.profile.smm_emulation and v.smi_pending and not v.smm
        return bool(v.pv_unhalted or v.nmi_pending or v.nmi_request or smi)

    def spins(self, vcpu: int) -> bool:
        """The thread is inside KVM_RUN and runnable, yet nothing it does changes the vCPU: the
        kernel's vcpu_block returns at once (IR) or KVM_RUN returns -EAGAIN at once and
        userspace re-enters (U), without ever sleeping, until an INIT or SIPI (rule 18). Such a
        thread shows as running, not blocked."""
        v = self._v(vcpu)
        if v.phase == Phase.BLOCKED:
            return self.runnable(v) and not self._wake_enabled(v)
        if v.phase == Phase.U_BLOCK:
            return self.runnable(v) and not self._uninit_wake_enabled(v)
        return False

    def step(self, vcpu: int, step_name: str):
        """Apply one enabled reaction (see pending_steps)."""
        if (vcpu, step_name) not in self.pending_steps():
            raise ModelError(f"step {step_name!r} is not enabled for vCPU {vcpu}")
        return getattr(self, "_" + step_name)(vcpu)

    def _guest_event(self, vcpu: int) -> None:
        """Reaction: vcpu_enter_guest with KVM_REQ_EVENT (processing point, rule 8)."""
        v = self.vcpus[vcpu]
        v.req_event = False
        v.nmi_request = False  # vcpu_enter_guest takes KVM_REQ_NMI before KVM_REQ_EVENT
        if not self.profile.sender_writes_mp_state:
            self._accept_events(v)
        if v.mp_state != RUN:
            v.phase = Phase.BLOCKED  # IR (or V1: whatever the sender wrote): do not enter
            return
        if self.profile.smm_emulation and v.smi_pending and not v.smm and self.smm_supported:
            v.smi_pending = False
            v.smm = True  # enter_smm; the SMI handler then runs guest code
            R.guest_ran(v.regs)
        if v.nmi_pending:
            R.guest_ran(v.regs)  # one NMI injected; the guest's handler runs
            if v.nmi_pending == 2 and not self.has_nmi_window:
                v.nmi_pending = 1  # d.7.16: the second waits for the next VM exit
                v.waits_for_exit = True
            else:
                v.nmi_pending = 0  # a second one comes in the NMI window, after the IRET

    def _exit_event(self, vcpu: int) -> None:
        """Reaction (d.7.15, d.7.16, kvm_pvm): a vCPU with an event waiting for its next VM exit
        exits early (a host interrupt, say), and re-entry processes the event. Rare: the guest
        runs only a few instructions meanwhile (1 trace in 300 under load)."""
        self.vcpus[vcpu].waits_for_exit = False
        self._guest_event(vcpu)

    def _wake(self, vcpu: int) -> None:
        """Reaction: a blocked vCPU wakes (rules 18-20; a.1 for V1)."""
        v = self.vcpus[vcpu]
        if not self.profile.sender_writes_mp_state:
            self._accept_events(v)
        table = self._wake_table
        new, nxt = table.get(v.mp_state, table[ANY])
        if new is not KEEP:
            v.mp_state = new  # rule 19: H -> R even if the waking SIPI was dropped
            v.pv_unhalted = False  # rule 21: the wake-up path always cleared it
        if nxt == "run":
            v.phase = Phase.GUEST
        elif nxt == "eintr":
            self._leave(v, RunResult.EINTR)
        # "block": stays BLOCKED (rule 20)

    def _wake_uninit(self, vcpu: int) -> None:
        """Reaction: the UNINITIALIZED branch of KVM_RUN wakes, processes, returns (rule 29)."""
        v = self.vcpus[vcpu]
        if self.profile.run_u_processes_events:
            self._accept_events(v)
        self._leave(v, RunResult.EAGAIN)  # d.7.6: even when the vCPU just became R

    def _settling_steps(self) -> list[tuple[int, str]]:
        """pending_steps without the rare exit (d.7.15, d.7.16): settling never waits for it."""
        return [s for s in self.pending_steps() if s[1] != "exit_event"]

    def _settle_vcpu(self, v: VCpu) -> None:
        for _ in range(64):
            steps = [s for s in self._settling_steps() if s[0] == v.index]
            if not steps:
                return
            getattr(self, "_" + steps[0][1])(v.index)
        raise ModelError(f"vCPU {v.index} does not settle: {v!r}")

    def settle(self) -> None:
        """Run every enabled reaction to quiescence (sequential replay)."""
        for _ in range(64 * len(self.vcpus) + 64):
            steps = self._settling_steps()
            if not steps:
                return
            vcpu, name = steps[0]
            getattr(self, "_" + name)(vcpu)
        raise ModelError(f"the machine does not settle: {self.vcpus!r}")

    # ------------------------------------------------------------------ atomic steps

    def atomic_steps(self, op_name: str, *args) -> list[Step]:
        """The atomic steps an operation consists of, for an interleaving explorer. Apply them
        in order with ``apply``; other threads' steps may come in between."""
        if op_name == "guest_hlt":
            return [Step("hlt_exit", args), Step("emulate_halt", args)]
        if op_name == "enter_run":
            return [Step("run_entry", args)]
        if op_name not in _OPS or op_name in ("guest_event", "wake", "wake_uninit"):
            raise ModelError(f"unknown operation {op_name!r}")
        return [Step(op_name, args)]

    def can_apply(self, step: Step) -> bool:
        """Whether the thread can perform ``step`` now: guest instructions need the vCPU in
        guest mode, vCPU ioctls and KVM_RUN need its thread outside KVM_RUN. An explorer treats
        a step that cannot be applied as disabled (the guest lost control, e.g. to an INIT)."""
        vcpu = step.args[0] if step.args else None
        if step.op in _GUEST_STEPS:
            return self._v(vcpu).phase == Phase.GUEST
        if step.op == "emulate_halt":
            return self._v(vcpu).phase == Phase.HALT_EXIT
        if step.op in _IOCTL_STEPS:
            return self._v(vcpu).phase == Phase.OUT
        return step.op in _OPS

    def apply(self, step: Step):
        """Perform one atomic step (from atomic_steps) and return its result."""
        try:
            method = _OPS[step.op]
        except KeyError:
            raise ModelError(f"unknown step {step.op!r}") from None
        return getattr(self, method)(*step.args)
