"""Human-readable views of the model, generated from the model itself so they cannot drift.

``transition_table(profile)`` returns a markdown table: each row starts a fresh VM (2 vCPUs,
KVM_SET_LAPIC done so both are routable), puts the AP (vCPU 1) into a state, applies one event
through the public API and reports what the model says. ``profile_table()`` lists the profile
switches side by side, with the layer and rule of each; ``state_graph_dot(profile)`` draws the
state changes as Graphviz.
``python -m reference.describe`` rewrites the generated part of docs/model.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import encodings as enc
from .machine import ARH, IR, RUN, SR, H, Machine, MpState, Phase, U
from .profiles import PROFILES, SWITCHES, Profile, format_value, get_profile

BEGIN = "<!-- BEGIN GENERATED: python -m reference.describe -->"
END = "<!-- END GENERATED -->"


def _name(state) -> str:
    return state.name if isinstance(state, MpState) else str(state)


def _start_states(p: Profile) -> list:
    states = [U, RUN, H, IR]
    if p.sender_writes_mp_state:
        states.append(SR)  # only V1 can hold SIPI_RECEIVED
    if p.set_mp_state_whitelist is not None and 9 in p.set_mp_state_whitelist:
        states.append(ARH)
    return states


def _machine(p: Profile, state) -> Machine:
    m = Machine(2, p, "vmx")
    m.set_lapic(0)  # rule 34: enrol the AP in the APIC map
    m.vcpus[1].mp_state = state
    return m


def _pending(m: Machine) -> str:
    v = m.vcpus[1]
    bits = [n for n, on in (("INIT", v.pending_init), ("SIPI", v.pending_sipi)) if on]
    return "+".join(bits) or "-"


def _msi(m: Machine, dm: int, vector: int = 0) -> int:
    return m.signal_msi(*enc.encode_msi(dm, vector, 1))


def _run(m: Machine) -> str:
    r = m.enter_run(1)
    return str(r)


def _events(p: Profile):
    """(event label, function(machine) -> shown result, rules) for the AP."""
    ev = [
        ("INIT by MSI", lambda m: f"count {_msi(m, enc.DM_INIT)}", "1, 2, 7"),
        ("SIPI(0x10) by MSI", lambda m: f"count {_msi(m, enc.DM_STARTUP, 0x10)}", "3, 4"),
    ]
    if p.get_mp_state_processes:

        def proc(init: bool, sipi: bool):
            def f(m: Machine) -> str:
                v = m.vcpus[1]
                v.pending_init, v.pending_sipi, v.sipi_vector = init, sipi, 0x10
                return f"reports {_name(m.get_mp_state(1))}"

            return f

        ev += [
            ("processing: INIT pending", proc(True, False), "9, 10, 24"),
            ("processing: SIPI pending", proc(False, True), "12, 13, 24"),
            ("processing: INIT+SIPI pending", proc(True, True), "9, 24"),
        ]
        if p.smm_emulation:

            def smm(m: Machine) -> str:
                v = m.vcpus[1]
                v.smm, v.pending_init, v.pending_sipi = True, True, True
                return f"reports {_name(m.get_mp_state(1))}"

            ev.append(("processing in SMM: INIT+SIPI pending", smm, "15, 17"))
    ev += [
        ("KVM_RUN", _run, "29, d.3"),
        ("GET_MP_STATE", lambda m: f"reports {_name(m.get_mp_state(1))}", "24, d.1"),
    ]
    return ev


def transition_rows(profile) -> list[tuple[str, str, str, str, str, str]]:
    """(from, event, to, pending after, result, rules) for every start state and event."""
    p = get_profile(profile)
    rows = []
    for state in _start_states(p):
        for label, fn, rules in _events(p):
            m = _machine(p, state)
            result = fn(m)
            v = m.vcpus[1]
            where = " (in KVM_RUN)" if v.phase != Phase.OUT else ""
            rows.append(
                (_name(state), label, _name(v.mp_state) + where, _pending(m), result, rules)
            )
    rows += _thread_rows(p)
    rows += _set_mp_state_rows(p)
    return rows


def _thread_rows(p: Profile):
    """What a thread inside KVM_RUN does: HLT, and wake-ups by INIT or a stray SIPI."""
    rows = []
    # HLT in R (rule 22), with and without a pending INIT.
    m = _machine(p, RUN)
    m.enter_run(1)
    m.guest_hlt(1)
    rows.append(("RUNNABLE", "guest HLT", _name(m.vcpus[1].mp_state), _pending(m), "-", "22"))
    m = _machine(p, RUN)
    m.enter_run(1)
    hlt_exit, emulate_halt = m.atomic_steps("guest_hlt", 1)
    m.apply(hlt_exit)
    count = _msi(m, enc.DM_INIT)
    m.apply(emulate_halt)
    rows.append(
        (
            "RUNNABLE",
            "HLT exit, INIT by MSI, kvm_emulate_halt",
            _name(m.vcpus[1].mp_state),
            _pending(m),
            f"count {count}",
            "22, (e)",
        )
    )
    for state, dm, label, rules in (
        (H, enc.DM_STARTUP, "stray SIPI(0x10) wakes, settle", "19"),
        (H, enc.DM_INIT, "INIT wakes, settle", "18, 10"),
        (IR, enc.DM_STARTUP, "SIPI(0x10) wakes, settle", "12, 20"),
    ):
        m = _machine(p, state)
        m.enter_run(1)
        count = _msi(m, dm, 0x10)
        m.settle()
        v = m.vcpus[1]
        where = " (in KVM_RUN)" if v.phase != Phase.OUT else f" (KVM_RUN {v.last_exit})"
        rows.append(
            (_name(state) + " in KVM_RUN", label, _name(v.mp_state) + where, _pending(m),
             f"count {count}", rules)
        )  # fmt: skip
    # INIT to the BSP (rules 10, 11; d.7.8).
    m = Machine(2, p, "vmx")
    count = m.signal_msi(*enc.encode_msi(enc.DM_INIT, 0, 0))
    reported = m.get_mp_state(0)
    rows.append(("RUNNABLE (BSP)", "INIT by MSI, GET_MP_STATE", _name(reported), "-",
                 f"count {count}", "10, 11"))  # fmt: skip
    return rows


def _set_mp_state_rows(p: Profile):
    rows = []
    for value in range(11):
        m = _machine(p, RUN)
        rc = m.set_mp_state(1, value)
        shown = _name(m.vcpus[1].mp_state) if rc == 0 else "RUNNABLE (unchanged)"
        rows.append(("RUNNABLE", f"SET_MP_STATE({value})", shown, _pending(m), f"{rc}", "25-28"))
    if p.smm_emulation:
        m = _machine(p, RUN)
        m.vcpus[1].smm = True
        rc = m.set_mp_state(1, int(IR))
        shown = _name(m.vcpus[1].mp_state)
        rows.append(("RUNNABLE in SMM", "SET_MP_STATE(2)", shown, _pending(m), f"{rc}", "28"))
        if rc == 0:
            r = m.enter_run(1)
            rows.append(("INIT_RECEIVED in SMM", "KVM_RUN", shown, _pending(m), str(r), "d.3"))
    return rows


def transition_table(profile) -> str:
    """Markdown table of the model's transitions for one profile."""
    p = get_profile(profile)
    out = [
        f"#### `{p.name}`: {p.description}",
        "",
        "| from (AP) | event | to | pending after | result | rules |",
        "|---|---|---|---|---|---|",
    ]
    for row in transition_rows(p):
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def profile_table() -> str:
    """Markdown table of every profile switch (layer, rule, type, meaning), one column per
    profile, after a row of the releases each profile covers."""
    names = list(PROFILES)
    out = [
        "| switch | layer | rule | type | " + " | ".join(f"`{n}`" for n in names) + " | meaning |"
    ]
    out.append("|---" * (len(names) + 5) + "|")
    ranges = " | ".join(PROFILES[n].release_range for n in names)
    out.append(f"| releases | | | | {ranges} | kernel releases the profile describes |")
    for sw in SWITCHES.values():
        kind = "/".join(sw.choices) if sw.kind == "enum" else sw.kind
        cells = " | ".join(format_value(getattr(PROFILES[n], sw.name), sw.name) for n in names)
        out.append(f"| {sw.name} | {sw.layer} | {sw.rule} | {kind} | {cells} | {sw.doc} |")
    return "\n".join(out) + "\n"


def state_graph_dot(profile) -> str:
    """Graphviz dot of the mp_state changes in transition_table(profile)."""
    p = get_profile(profile)
    edges: dict[tuple[str, str], list[str]] = {}
    for frm, event, to, _pending_after, _result, _rules in transition_rows(p):
        a = frm.split(" ")[0]
        b = to.split(" ")[0]
        if a != b and b.isupper():
            edges.setdefault((a, b), []).append(event)
    lines = [f'digraph "{p.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for (a, b), events in sorted(edges.items()):
        label = "\\n".join(sorted(set(events)))
        lines.append(f'  "{a}" -> "{b}" [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def generated_markdown() -> str:
    """The generated part of docs/model.md."""
    parts = ["### Profile switches", "", profile_table()]
    parts.append("### Transition tables, per profile")
    parts.append("")
    for name in PROFILES:
        parts.append(transition_table(name))
    return "\n".join(parts)


def update_doc(path: Path) -> bool:
    """Rewrite the generated section of docs/model.md; True if it changed."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + generated_markdown() + END + tail
    if new != text:
        path.write_text(new)
        return True
    return False


def doc_section(text: str) -> str:
    """The generated section as it stands in a docs/model.md text."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].lstrip("\n")


if __name__ == "__main__":  # pragma: no cover
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/model.md")
    print("updated" if update_doc(target) else "unchanged", target)
