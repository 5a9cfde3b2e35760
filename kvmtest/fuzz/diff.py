"""`kvmtest diff-profiles A B`: the shortest traces on which two profiles predict differently.

Breadth-first over traces of host ioctls on small VMs (no guest code: what a VMM can do to
fingerprint a kernel), from a fixed alphabet of steps that matter to INIT/SIPI. Both models
advance together, one clone per node, so a trace of k steps costs k steps, not a replay. A
trace is reported at the first step where the two predictions differ; its prefixes are
therefore all alike, and no shorter trace in the alphabet differs in the same field first.
Examples are kept one per (setup, field of the first difference), shortest first.
"""

from __future__ import annotations

from kvmtest import ops as f
from kvmtest.sim.schedule import Sequential
from kvmtest.sim.system import System
from reference import GUEST
from reference import encodings as enc

SETUPS = (
    f.Setup(vcpus=2, apic="xapic"),
    f.Setup(vcpus=2, apic="x2apic"),
    f.Setup(vcpus=2, apic="xapic", sync_apic_map=False),
)


def _msi(mode, dest, vector=0x10, **kw):
    return f.Msi(*enc.encode_msi(mode, vector, dest, **kw))


def alphabet() -> list:
    ops = [
        _msi(enc.DM_INIT, 1),
        _msi(enc.DM_STARTUP, 1, 0x10),
        _msi(enc.DM_STARTUP, 1, 0x9F),
        _msi(enc.DM_INIT, 0),
        _msi(enc.DM_INIT, 0xFF),
        _msi(enc.DM_INIT, 2),
        _msi(enc.DM_NMI, 1),
        _msi(enc.DM_SMI, 1),
        _msi(enc.DM_INIT, 1, logical=True),
        f.Msi(enc.MSI_ADDR_BASE | (1 << 12) | (1 << 3), 0, enc.DM_FIXED | 0x30),
        f.Msi(enc.MSI_ADDR_BASE | (1 << 12), 0x1, enc.DM_INIT),
        f.GetMpState(1),
        f.Observe((1,), ("mp_state", "regs", "sregs", "events")),
    ]
    ops += [f.SetMpState(1, s) for s in range(0, 10)] + [f.SetMpState(1, 0x80)]
    ops += [
        f.SetVcpuEvents(1, sipi_vector=0x20),
        f.SetVcpuEvents(1, latched_init=1),
        f.SetVcpuEvents(1, smm=1),
        f.SetLapic(1),
        f.Smi(1),
        f.Nmi(1),
    ]
    return ops


def _plain(out: dict) -> tuple:
    return tuple(sorted(((k, "guest" if v is GUEST else v) for k, v in out.items()), key=repr))


def _step(model: Sequential, step):
    try:
        return _plain(model.perform(step))
    except Exception as exc:  # a refusal is an outcome like any other
        return (("refused", type(exc).__name__),)


def _differing_field(a: tuple, b: tuple) -> str:
    da, db = dict(a), dict(b)
    for key in sorted(da.keys() | db.keys(), key=repr):
        if da.get(key) != db.get(key):
            return key if isinstance(key, str) else key[1]
    return "?"


def diff_profiles(a, b, *, max_steps: int = 3, examples: int = 6, flavour: str = "vmx") -> list:
    """[(trace, field, what A predicts, what B predicts)] at most `examples`, shortest first."""
    found: dict = {}
    ops = alphabet()
    for setup in SETUPS:
        frontier = [
            (
                (),
                Sequential(System(setup, a, flavour, None, True)),
                Sequential(System(setup, b, flavour, None, True)),
            )
        ]
        for _depth in range(max_steps):
            nxt = []
            for steps, ma, mb in frontier:
                for op in ops:
                    ca, cb = Sequential(ma.system.clone()), Sequential(mb.system.clone())
                    out_a, out_b = _step(ca, op), _step(cb, op)
                    trail = steps + (op,)
                    if out_a != out_b:
                        key = (setup, _differing_field(out_a, out_b))
                        if key not in found:
                            found[key] = (trail, setup, out_a, out_b)
                    elif out_a and out_a[0][0] != "refused":
                        nxt.append((trail, ca, cb))
            if len({k[1] for k in found}) >= examples:
                break
            frontier = nxt if len(nxt) < 20000 else nxt[:20000]
    ranked = sorted(found.items(), key=lambda kv: (len(kv[1][0]), repr(kv[0][1])))
    out, fields = [], set()
    for (setup, field), (trail, setup, out_a, out_b) in ranked:
        if field in fields:
            continue  # one example per field: the shortest
        fields.add(field)
        trace = f.Trace(
            name=f"diff-{len(out)}",
            setup=setup,
            steps=trail + (f.Observe((0, 1), ("mp_state",)),),
            description="",
            pinned_profiles=(),
        )
        out.append((trace, field, dict(out_a), dict(out_b)))
        if len(out) >= examples:
            break
    return out


def _describe(trace: f.Trace) -> str:
    from kvmtest.trace.dump import step_mapping

    parts = []
    for step in trace.steps[:-1]:
        parts.append(step_mapping(step))
    return "; ".join(parts)


def render(a, b, found, markdown: bool = False) -> str:
    lines = []
    if markdown:
        lines.append(f"## {a.name} vs {b.name}\n")
        lines.append(f"| # | setup | steps | first difference | {a.name} | {b.name} |")
        lines.append("|---|---|---|---|---|---|")
    else:
        lines.append(f"{a.label} vs {b.label}: {len(found)} shortest differences")
    for i, (trace, field, out_a, out_b) in enumerate(found, 1):
        setup = trace.setup
        what = f"{setup.vcpus} vCPUs {setup.apic}" + (
            "" if setup.sync_apic_map else ", map unsynced"
        )
        va = _values(out_a, field)
        vb = _values(out_b, field)
        if markdown:
            steps = _describe(trace).replace("|", "\\|")
            lines.append(f"| {i} | {what} | `{steps}` | {field} | {va} | {vb} |")
        else:
            lines.append(f"{i}. [{what}] {_describe(trace)}")
            lines.append(f"   {field}: {a.name} {va}, {b.name} {vb}")
    if not found:
        lines.append("no difference found within the search bounds")
    return "\n".join(lines)


def _values(out: dict, field: str) -> str:
    vals = [f"{v}" for k, v in out.items() if (k if isinstance(k, str) else k[1]) == field]
    text = ", ".join(vals) if vals else "absent"
    return text if len(text) < 60 else text[:57] + "..."


def profile_diffs_markdown(max_steps: int = 2) -> str:
    """docs/profile-diffs.md: every generation boundary of reference.PROFILES with examples."""
    import reference

    names = list(reference.PROFILES)
    out = [
        "# Profile boundaries: the shortest traces on which adjacent profiles disagree",
        "",
        "Generated by `python -m kvmtest.fuzz.diff > docs/profile-diffs.md` (a test keeps it",
        "true): for each adjacent pair of `reference.PROFILES`, the breadth-first search of",
        f"`kvmtest diff-profiles A B --max-steps {max_steps}` over host ioctls on 2-vCPU VMs (the",
        "model with SMM available, VMX register flavour), one example per field of the first",
        "difference, shortest first. Run the steps on a host (`kvmtest run` on a trace built",
        "from them) to tell which side of a boundary its kernel is on. Boundaries that need",
        "guest code (KVM_RUN, HLT, PV unhalt) do not show up here: see docs/semantics.md.",
        "",
    ]
    for a, b in zip(names, names[1:], strict=False):
        pa, pb = reference.PROFILES[a], reference.PROFILES[b]
        found = diff_profiles(pa, pb, max_steps=max_steps)
        out.append(render(pa, pb, found, markdown=True))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(profile_diffs_markdown(), end="")
