"""Random guest-less traces that exercise the model broadly: the batch a mutant must also
predict alike to be called equivalent. Seeded, so every worker builds the same batch.

Each trace builds a VM of 1-4 vCPUs (xAPIC or x2APIC, kernel or split irqchip), sends MSIs of
every delivery mode to physical, logical and broadcast destinations, sets mp_state, vCPU
events, LAPIC registers, IA32_APIC_BASE and registers, and observes everything on every vCPU
after each step. The Hypothesis strategies of tests/trace/strategies.py (when the checkout has
them) add a derandomized batch of their own.
"""

from __future__ import annotations

import random

from kvmtest import ops as f

DELIVERIES = (0, 1, 2, 4, 5, 5, 6, 6, 7)
VECTORS = (0x00, 0x10, 0x20, 0x9F, 0xFF)


def _msi(rng: random.Random, n: int) -> f.Msi:
    dest = rng.choice([*range(n + 1), 0xFF, 0x0F, 0x01, 0x02, 0x03])
    logical = rng.random() < 0.3
    hint = rng.random() < 0.15
    address = 0xFEE00000 | dest << 12 | logical << 2 | hint << 3
    trigger = rng.random() < 0.2
    level = rng.random() < 0.5
    data = rng.choice(VECTORS) | rng.choice(DELIVERIES) << 8 | level << 14 | trigger << 15
    return f.Msi(address, rng.choice([0, 0, 0, 0x100]), data)


def _lapic(rng: random.Random, vcpu: int) -> f.SetLapic:
    options = {
        "id": lambda: rng.choice([0, 1, 2, 5]) << 24,
        "ldr": lambda: rng.choice([0, 1, 2, 4, 0x11, 0x21]) << 24,
        "dfr": lambda: rng.choice([0xFFFFFFFF, 0x0FFFFFFF]),
        "spiv": lambda: rng.choice([0xFF, 0x1FF, 0x10F]),
    }
    chosen = [name for name in f.LAPIC_REGISTERS if rng.random() < 0.5]
    return f.SetLapic(vcpu, tuple((name, options[name]()) for name in chosen))


def _step(rng: random.Random, n: int):
    vcpu = rng.randrange(n)
    kind = rng.choice(
        ["msi"] * 6
        + ["set_mp_state", "get_mp_state", "events", "lapic", "lapic", "apic_base"]
        + ["regs", "sregs", "nmi", "smi"]
    )
    if kind == "msi":
        return _msi(rng, n)
    if kind == "set_mp_state":
        return f.SetMpState(vcpu, rng.choice([0, 1, 2, 3, 4, 5, 7, 9]))
    if kind == "get_mp_state":
        return f.GetMpState(vcpu)
    if kind == "events":
        return f.SetVcpuEvents(
            vcpu,
            rng.choice([None, 0x10, 0x20]),
            rng.choice([None, 0, 1]),
            rng.choice([None, None, 0]),
        )
    if kind == "lapic":
        return _lapic(rng, vcpu)
    if kind == "apic_base":
        base = 0xFEE00000 | rng.choice([0x800, 0xC00, 0x000, 0x900, 0xD00, 0x400])
        return f.SetMsrs(vcpu, (("apic_base", base),))
    if kind == "regs":
        return f.SetRegs(vcpu, (("rip", rng.choice([0, 0xFFF0, 0x1000])), ("rdx", 0x1234)))
    if kind == "sregs":
        values = (
            ("cs.selector", rng.choice([0, 0xF000, 0x1000])),
            ("cs.base", rng.choice([0, 0xFFFF0000, 0x10000])),
            ("gdt.base", rng.choice([0, 0x5000])),
            ("cr0", rng.choice([0x60000010, 0x10, 0x11, 0x60000011])),
        )
        return f.SetSregs(vcpu, values)
    return f.Nmi(vcpu) if kind == "nmi" else f.Smi(vcpu)


def directed(count: int, seed: int = 1) -> list[f.Trace]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = rng.randint(1, 4)
        setup = f.Setup(
            vcpus=n,
            apic=rng.choice(["xapic", "xapic", "x2apic"]),
            irqchip=rng.choice(["kernel", "kernel", "split"]),
            sync_apic_map=rng.random() < 0.8,
        )
        look = f.Observe(tuple(range(n)), f.READS)
        steps = [look]
        for _ in range(rng.randint(2, 8)):
            steps += [_step(rng, n), look]
        out.append(f.Trace(f"probe-{i}", setup, tuple(steps)))
    return out


def from_strategies(count: int) -> list[f.Trace]:
    """A derandomized batch from tests/trace/strategies.py; [] outside a checkout."""
    if count < 1:
        return []
    try:
        from hypothesis import HealthCheck, Phase, given, settings

        from tests.trace.strategies import traces
    except ImportError:
        return []
    batch: list = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(traces())
    def collect(trace):
        batch.append(trace)

    collect()
    return batch
