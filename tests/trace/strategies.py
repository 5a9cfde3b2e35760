"""Hypothesis strategies for whole traces (kvmtest.ops), valid as the loader defines valid."""

import dataclasses

from hypothesis import strategies as st

import reference
from kvmtest import ops as f

U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, (1 << 64) - 1)
NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
RULES = st.one_of(
    st.integers(1, 41).map(str), st.integers(1, 14).map(lambda n: f"d7.{n}"), st.just("d8.1")
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40).map(str.strip)


def _vcpu(n):
    return st.integers(0, n - 1)


@st.composite
def observe(draw, n):
    vcpus = tuple(sorted(draw(st.sets(_vcpu(n), min_size=1, max_size=min(n, 3)))))
    read = tuple(draw(st.lists(st.sampled_from(f.READS), min_size=1, max_size=4, unique=True)))
    readable = sorted({name for r in read for name in f.fields_of_read(r)})
    fields = draw(st.none() | st.sets(st.sampled_from(readable), min_size=1, max_size=4))
    chosen = sorted(fields) if fields is not None else readable
    expect = {}
    for vcpu in draw(st.sets(st.sampled_from(vcpus), max_size=len(vcpus))):
        names = draw(st.sets(st.sampled_from(chosen), min_size=1, max_size=3))
        expect[vcpu] = {name: draw(U32 if name == "mp_state" else U64) for name in sorted(names)}
    return f.Observe(vcpus, read, None if fields is None else frozenset(fields), expect)


def host_op(n):
    return st.one_of(
        st.builds(f.Msi, U32, U32, U32),
        st.builds(f.GetMpState, _vcpu(n)),
        st.builds(f.SetMpState, _vcpu(n), U32),
    )


def guest_op(n):
    return st.one_of(
        st.builds(f.Icr, _vcpu(n), U64),
        st.builds(f.GuestCommand, _vcpu(n), st.sampled_from(["start", "hlt", "x2apic", "report"])),
        st.builds(f.GuestCommand, _vcpu(n), st.just("spin"), st.integers(0, 100_000)),
    )


def sequential_op(n, guest):
    ops = [
        host_op(n),
        observe(n),
        st.builds(f.SetLapic, _vcpu(n)),
        st.builds(f.Smi, _vcpu(n)),
        st.builds(f.Nmi, _vcpu(n)),
        st.builds(
            f.SetVcpuEvents,
            _vcpu(n),
            st.none() | st.integers(0, 255),
            st.none() | st.integers(0, 255),
            st.none() | st.integers(0, 255),
        ),
    ]
    ops += [
        st.builds(f.SetRegs, _vcpu(n), st.just((("rip", 0xFFF0), ("rdx", 0x600)))),
        st.builds(f.SetSregs, _vcpu(n), st.just((("cs.selector", 0xF000), ("cr0", 0x10)))),
        st.builds(f.SetMsrs, _vcpu(n), st.tuples(st.tuples(st.just("apic_base"), U64))),
        st.builds(f.SetLapic, _vcpu(n), st.just((("ldr", 1 << 24), ("spiv", 0x1FF)))),
    ]
    if guest == "stepper":
        ops.append(guest_op(n))
    return st.one_of(*ops)


@st.composite
def restore(draw, n):
    order = tuple(draw(st.permutations(f.RESTORE_SETS)))[: draw(st.integers(1, 6))]
    states = ()
    if "mp_state" in order:
        chosen = draw(st.sets(_vcpu(n), max_size=n))
        states = tuple((v, draw(st.integers(0, 9))) for v in sorted(chosen))
    return f.Restore(order, states)


@st.composite
def concurrently(draw, n, guest):
    threads = ["host"] + [f"vcpu{v}" for v in range(n)]
    chosen = draw(st.lists(st.sampled_from(threads), min_size=2, max_size=3, unique=True))
    kinds = host_op(n) if guest != "stepper" else st.one_of(host_op(n), guest_op(n))
    branches = tuple(
        f.Branch(thread, tuple(draw(st.lists(kinds, min_size=1, max_size=3)))) for thread in chosen
    )
    return f.Concurrently(branches)


@st.composite
def traces(draw):
    n = draw(st.integers(1, 8))
    guest = draw(st.sampled_from(["none", "stepper", "smp-boot"]))
    setup = f.Setup(
        vcpus=n,
        apic=draw(st.sampled_from(["xapic", "x2apic"])),
        irqchip=draw(st.sampled_from(["kernel", "split"])),
        guest=guest,
        sync_apic_map=draw(st.booleans()),
    )
    steps = draw(st.lists(sequential_op(n, guest), min_size=1, max_size=6))
    if guest == "smp-boot" and draw(st.booleans()):
        boot = f.SmpBoot(draw(st.booleans()), draw(st.integers(0x08, 0x9F)))
        steps.insert(draw(st.integers(0, len(steps))), boot)
    if guest == "none" and draw(st.booleans()):
        at = draw(st.integers(0, len(steps)))
        steps[at:at] = [f.Snapshot(), draw(restore(n))]
    outcomes = ()
    if draw(st.booleans()):
        at = draw(st.integers(0, len(steps)))
        steps.insert(at, draw(concurrently(n, guest)))
        labels = st.lists(TEXT.filter(bool), min_size=1, max_size=3, unique=True).map(tuple)
        chosen = draw(st.lists(st.sampled_from(list(reference.PROFILES)), max_size=2, unique=True))
        outcomes = tuple((p, draw(labels)) for p in chosen)
        # The loader refuses observe.expect after a block: the engine never checks it there.
        steps[at + 1 :] = [
            dataclasses.replace(s, expect={}) if s.kind == "observe" else s for s in steps[at + 1 :]
        ]
    profiles = list(reference.PROFILES)
    return f.Trace(
        name=draw(NAMES),
        setup=setup,
        steps=tuple(steps),
        description=draw(TEXT),
        rules=tuple(draw(st.lists(RULES, max_size=3))),
        tags=tuple(draw(st.lists(NAMES, max_size=3))),
        profiles=tuple(draw(st.lists(st.sampled_from(profiles), max_size=2, unique=True))),
        requires=tuple(
            draw(st.lists(st.sampled_from(["smm", "x2apic", "split-irqchip"]), unique=True))
        ),
        pinned_profiles=tuple(draw(st.lists(st.sampled_from(profiles), max_size=2, unique=True))),
        outcomes=outcomes,
    )
