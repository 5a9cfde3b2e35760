"""Random traces that exercise INIT/SIPI: a scenario first (start the APs, INIT, SIPI), then
a mix weighted towards INIT/SIPI sequences and observations, now and then a concurrent block.

`random_trace(seed)` is a pure function of the seed (random.Random, no global state), so a run
is reproducible from `--seed` and a child process can generate its own share. Every trace is
valid as the loader defines valid (tests/fuzz: dump, load back equal).

Register, MSR and LAPIC steps (set_regs, set_sregs, set_msrs, set_lapic with registers) are
drawn by _host_op. Not generated: snapshot/restore (not in kvmtest.ops yet: add it to _host_op
when it exists), guest_ran (recordings only), smp-boot guests (slow: a whole boot per trace),
and expect pins (the model's prediction is the judge).
"""

from __future__ import annotations

import random

from kvmtest import ops as f
from kvmtest.guest import layout
from reference import encodings as enc

INIT, SIPI = enc.DM_INIT, enc.DM_STARTUP
DELIVERY = [  # (mode, weight): INIT and SIPI dominate
    (enc.DM_INIT, 30),
    (enc.DM_STARTUP, 30),
    (enc.DM_FIXED, 8),
    (enc.DM_NMI, 6),
    (enc.DM_SMI, 4),
    (enc.DM_LOWEST, 4),
    (enc.DM_EXTINT, 2),
    (enc.DM_REMRD, 2),
]
VECTORS = [0x10, 0x20, 0x9F, 0x00, 0x01, 0xFF, 0x30, 0x08]
# A stepper guest has a landing page only on these vector pages (kvmtest.guest.layout): a SIPI
# to another one runs whatever lies there, which neither the model nor the harness can follow.
LANDING_VECTORS = [v for v in VECTORS if layout.VECTOR_FIRST <= v <= layout.VECTOR_LAST]


class _Rng(random.Random):
    """The generator's randomness, and the vectors this trace may use."""

    vectors = VECTORS
    stepper = False  # a stepper guest: no register writes that move its running code
    mp_states = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


SHORTHANDS = [0, 0, 0, 0, 1, 2, 3]  # none mostly; self, all, all-but-self


def _mode(rng) -> int:
    modes, weights = zip(*DELIVERY, strict=True)
    return rng.choices(modes, weights)[0]


def _dest(rng, n: int, x2apic: bool) -> int:
    r = rng.random()
    if r < 0.8:
        return rng.randrange(n)
    if r < 0.9:
        return 0xFFFFFFFF if x2apic and rng.random() < 0.5 else 0xFF  # broadcast
    return rng.choice([n, n + 1, 0x7F, 0x100])  # nobody there; 0x100: beyond the xAPIC map


def _msi(rng, n: int, mode: int | None = None, dest: int | None = None) -> f.Msi:
    mode = _mode(rng) if mode is None else mode
    dest = (
        (rng.randrange(n) if rng.random() < 0.9 else _dest(rng, n, False)) if dest is None else dest
    )
    logical = rng.random() < 0.08
    lo, hi, data = enc.encode_msi(mode, rng.choice(rng.vectors), dest & 0xFF, logical=logical)
    if rng.random() < 0.05:
        lo |= 1 << 3  # redirection hint
    if rng.random() < 0.05:
        data |= 1 << 15  # level-triggered
    if rng.random() < 0.05:
        data ^= 1 << 14  # level bit (forced to 1 for MSIs anyway)
    if rng.random() < 0.04:
        hi = rng.choice([0x100, 0x1, 0xFF00])  # x2APIC-format destination bits, or invalid
    return f.Msi(lo, hi, data)


def _icr_value(rng, n: int, x2apic: bool, mode: int | None = None, dest: int | None = None):
    mode = _mode(rng) if mode is None else mode
    shorthand = rng.choice(SHORTHANDS) if dest is None else 0
    dest = _dest(rng, n, x2apic) if dest is None else dest
    logical = rng.random() < 0.08
    level = not (mode == INIT and rng.random() < 0.15)  # INIT level de-assert now and then
    value = enc.encode_icr(
        mode,
        rng.choice(rng.vectors),
        dest,
        x2apic=x2apic,
        logical=logical,
        level=level,
        trig_level=not level or rng.random() < 0.05,
        shorthand=shorthand,
    )
    if x2apic and rng.random() < 0.03:
        value |= 1 << 12  # a reserved bit (rule 40)
    return value


def _observe(rng, n: int) -> f.Observe:
    r = rng.random()
    vcpus = tuple(sorted(rng.sample(range(n), rng.randint(1, min(n, 2)))))
    if r < 0.6:
        return f.Observe(vcpus, ("mp_state",))
    if r < 0.8:
        return f.Observe(vcpus, ("mp_state", "events"))
    return f.Observe(vcpus)  # mp_state, regs, sregs


def _host_op(rng, n: int, x2apic: bool):
    r = rng.random()
    v = rng.randrange(n)
    if r < 0.45:
        return _msi(rng, n)
    if r < 0.6:
        return _observe(rng, n)
    if r < 0.67:
        return f.GetMpState(v)
    if r < 0.77:
        state = rng.choice(rng.mp_states) if rng.random() < 0.9 else 0x80
        return f.SetMpState(v, state)
    if r < 0.85:
        pick = rng.random
        return f.SetVcpuEvents(
            v,
            rng.choice(rng.vectors) if pick() < 0.5 else None,
            rng.randint(0, 1) if pick() < 0.5 else None,
            rng.randint(0, 1) if pick() < 0.3 else None,
        )
    if r < 0.88:
        return f.SetLapic(v)
    if r < 0.9:  # SPIV software-enable off/on, or a logical ID (rules 34, 37)
        reg = rng.choice([("spiv", rng.choice([0xFF, 0x1FF])), ("ldr", 1 << (24 + v))])
        return f.SetLapic(v, (reg,))
    if r < 0.93 and rng.stepper:
        # KVM_SET_REGS/SREGS on a vCPU running the stepper send it into code that is not the
        # stepper's (the IVT, the middle of an instruction): nobody can say what it does next.
        return _observe(rng, n)
    if r < 0.92:
        return f.SetRegs(v, (("rip", rng.choice([0, 0xFFF0, 0x1000])),))
    if r < 0.93:
        return f.SetSregs(v, (("cs.selector", 0x1000), ("cs.base", 0x10000)))
    if r < 0.95:  # the BSP bit moved, x2APIC mode toggled (rule 11, d.7.9)
        base = 0xFEE00000 | (1 << 11) | rng.choice([0, 1 << 8, 1 << 10, (1 << 8) | (1 << 10)])
        return f.SetMsrs(v, (("apic_base", base),))
    if r < 0.975:
        return f.Nmi(v)
    return f.Smi(v)


def _guest_op(rng, n: int, x2apic: bool, vcpu: int):
    r = rng.random()
    if r < 0.55:
        return f.Icr(vcpu, _icr_value(rng, n, x2apic))
    if r < 0.8:
        return f.GuestCommand(vcpu, "hlt")
    if r < 0.88:
        return f.GuestCommand(vcpu, "report")
    if r < 0.95:
        return f.GuestCommand(vcpu, "spin", rng.choice([0, 10, 1000]))
    return f.GuestCommand(vcpu, "x2apic")


def _init_sipi(rng, n: int, x2apic: bool, guest: bool, target: int) -> list:
    """INIT, SIPI (sometimes a second SIPI, sometimes an observation between)."""
    vector = rng.choice(rng.vectors[:3])
    if guest and rng.random() < 0.7:
        steps = [f.Icr(0, _icr_value(rng, n, x2apic, INIT, target))]
        sipi = f.Icr(0, _icr_value(rng, n, x2apic, SIPI, target) & ~0xFF | vector)
    else:
        steps = [_msi(rng, n, INIT, target)]
        lo, hi, data = enc.encode_msi(SIPI, vector, target)
        sipi = f.Msi(lo, hi, data)
    if rng.random() < 0.3:
        steps.append(f.Observe((target,), ("mp_state",)))
    steps.append(sipi)
    if rng.random() < 0.3:
        steps.append(sipi)
    return steps


def _block(rng, n: int, x2apic: bool, started: list) -> f.Concurrently:
    threads = ["host"] + [f"vcpu{v}" for v in started]
    chosen = rng.sample(threads, min(len(threads), rng.choice([2, 2, 3])))
    branches = []
    for thread in chosen:
        steps = []
        for _ in range(rng.randint(1, 2 if len(chosen) > 2 else 3)):
            if thread == "host":
                r = rng.random()
                if r < 0.7:
                    steps.append(_msi(rng, n))
                elif r < 0.85:
                    steps.append(f.GetMpState(rng.randrange(n)))
                else:
                    steps.append(f.SetMpState(rng.randrange(n), rng.choice(rng.mp_states[:4])))
            else:
                steps.append(_guest_op(rng, n, x2apic, int(thread[4:])))
        branches.append(f.Branch(thread, tuple(steps)))
    return f.Concurrently(tuple(branches))


# The vendor modules whose models must all accept a trace: they differ in when a vCPU is
# busy (kvm_pvm lets a vCPU that INITs itself report first, d.7.15), and a trace stays a pure
# function of its seed rather than of the host it is generated on.
FLAVOURS = ("vmx", "pvm")


class _Builder:
    """Steps so far, and the models after them: a guest command goes only to a started vCPU
    whose last command has reported under every flavour (the model refuses a second command on
    a busy one, as the harness would queue it behind a thread that never returns)."""

    def __init__(self, setup: f.Setup, profile):
        from kvmtest.sim.schedule import Sequential
        from kvmtest.sim.system import System

        self.steps: list = []
        self.dead = False
        self.systems: list = []
        if setup.guest == "stepper":  # without a guest no command can be refused: no model
            self.systems = [System(setup, profile, fl, None, False) for fl in FLAVOURS]
            self.models = [Sequential(system) for system in self.systems]

    def add(self, step) -> bool:
        if self.dead:
            return False
        try:
            for model in self.models if self.systems else ():
                model.perform(step)
        except Exception:  # refused or unsettled: the trace ends before this step
            self.dead = True
            return False
        self.steps.append(step)
        return True

    def idle(self, vcpus) -> list:
        busy = set().union(*(system.busy() for system in self.systems))
        return [v for v in vcpus if v not in busy]


def random_trace(seed: int, name: str | None = None, profile="mainline") -> f.Trace:
    """One random trace, a pure function of `seed` (and the profile whose model says which
    vCPUs are free for a guest command)."""
    import reference

    rng = _Rng(seed)
    n = rng.choices([1, 2, 3, 4], [1, 6, 2, 1])[0]
    x2apic = rng.random() < 0.4
    guest = "stepper" if rng.random() < 0.5 else "none"
    if guest == "stepper":
        rng.vectors, rng.stepper = LANDING_VECTORS, True
        # SIPI_RECEIVED (4) starts the vCPU at the last SIPI vector, 0 if none came: no landing
        rng.mp_states = [s for s in _Rng.mp_states if s != f.MP_STATES["SIPI_RECEIVED"]]
    setup = f.Setup(
        vcpus=n,
        apic="x2apic" if x2apic else "xapic",
        irqchip="split" if rng.random() < 0.08 else "kernel",
        guest=guest,
        # Guest VMs always sync the APIC map (kvmtest.guest.loader), whatever the setup says,
        # while the model follows the setup: only host-driven traces leave it unsynced.
        sync_apic_map=guest != "none" or rng.random() < 0.9,
    )
    b = _Builder(setup, reference.get_profile(profile))
    started: list = []
    if guest == "stepper":
        # The BSP starts; some APs start too (they wait for their SIPI inside KVM_RUN).
        started = [0] + [v for v in range(1, n) if rng.random() < 0.8]
        for v in started:
            b.add(f.GuestCommand(v, "start"))
    aps = list(range(1, n)) or [0]
    stepper = guest == "stepper"
    if rng.random() < 0.8:  # the scenario: bring up an AP, maybe two
        for target in rng.sample(aps, min(len(aps), rng.choice([1, 1, 2]))):
            for step in _init_sipi(rng, n, x2apic, stepper and 0 in b.idle([0]), target):
                b.add(step)
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        free = b.idle(started)
        if r < 0.2:
            for step in _init_sipi(rng, n, x2apic, stepper and 0 in free, rng.choice(aps)):
                b.add(step)
        elif not stepper and r < 0.3:  # save and restore (guest-less VMs only)
            order = list(f.RESTORE_SETS)
            if rng.random() < 0.7:
                rng.shuffle(order)  # another restore order than QEMU's (rule 25, d.8)
            state = ((rng.randrange(n), rng.choice([0, 1, 2, 3])),) if rng.random() < 0.1 else ()
            b.add(f.Snapshot())
            b.add(f.Restore(tuple(order), state))
        elif free and r < 0.55:
            b.add(_guest_op(rng, n, x2apic, rng.choice(free)))
        else:
            b.add(_host_op(rng, n, x2apic))
    free = b.idle(started)
    block = free and rng.random() < 0.2  # needs two threads: the host and a free vCPU
    if block:
        b.steps.append(_block(rng, n, x2apic, free))
    if not b.dead or not b.steps or block:
        b.steps.append(f.Observe(tuple(range(n)), ("mp_state",) if rng.random() < 0.7 else f.READS))
    return f.Trace(
        name=name or f"fuzz-{seed}",
        setup=setup,
        steps=tuple(b.steps),
        description=f"random trace, seed {seed}",
        tags=("fuzz", setup.apic, "guest" if stepper else "msi"),
        pinned_profiles=(),
    )
