"""Rule coverage of the built-in corpus: which traces check which rule of the semantics notes.

`python -m kvmtest.coverage` prints docs/coverage.md. The table is generated from the traces'
`rules:` lists and from kvmtest/coverage_uncovered.yaml (rule -> why this host, or the trace
format, cannot exercise it), so the document cannot drift from the corpus:
tests/corpus/test_coverage.py compares the two.

Rule numbers are those of /work/shared/notes/kvm-init-sipi-semantics.md: 1-41 (section b),
d7.1-d7.14 (the quirk list, section d.7) and d8.1-d8.7 (host observations, section d.8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

UNCOVERED_FILE = Path(__file__).with_name("coverage_uncovered.yaml")

# One line per rule, paraphrasing the notes (section b, d.7, d.8) so the table reads on its own.
RULES = {
    "1": "INIT assert sets the pending INIT bit and discards a pending SIPI",
    "2": "level-triggered INIT with level 0 (de-assert) is ignored, counts 0",
    "3": "SIPI always stores its vector and sets the pending bit; counts 1 in any state",
    "4": "two SIPIs before processing: the last vector wins",
    "5": "INIT/SIPI ignore the software-enable bit; fixed interrupts to a disabled APIC count 0",
    "6": "only hardware-enabled APICs (IA32_APIC_BASE bit 11) are targets",
    "7": "every accepted INIT/SIPI raises KVM_REQ_EVENT and kicks the target",
    "8": "events are processed only at processing points (not by GET_REGS/GET_SREGS)",
    "9": "INIT is processed before SIPI in the same pass: IR is never observable",
    "10": "INIT processing: full INIT reset, then RUNNABLE for the BSP, INIT_RECEIVED for an AP",
    "11": "the BSP is the vCPU with the BSP bit in IA32_APIC_BASE (V1/V2: vcpu_id)",
    "12": "SIPI is processed only in INIT_RECEIVED; elsewhere dropped, vector kept",
    "13": "SIPI fix-up: CS.selector = v<<8, CS.base = v<<12, RIP = 0, nothing else",
    "14": "the stored SIPI vector is never cleared (not by INIT)",
    "15": "in SMM an INIT stays latched and SIPIs are dropped",
    "16": "INIT latched in VMX root mode / with GIF = 0; INIT in L2 exits to L1",
    "17": "a SIPI is dropped unconditionally while INIT/SIPI are blocked",
    "18": "a pending INIT/SIPI makes the vCPU runnable (ends HLT, U and IR blocks)",
    "19": "after a wake-up HALTED becomes RUNNABLE even if the SIPI was dropped",
    "20": "INIT_RECEIVED stays INIT_RECEIVED across wake-ups",
    "21": "becoming RUNNABLE clears pv_unhalted (6.15)",
    "22": "HLT does not enter HALTED when events are already pending",
    "23": "initial mp_state: RUNNABLE for the BSP or without irqchip, else UNINITIALIZED",
    "24": "KVM_GET_MP_STATE processes pending events first; HALTED + pv_unhalted reads RUNNABLE",
    "25": "KVM_SET_MP_STATE(SIPI_RECEIVED) = INIT_RECEIVED + pending SIPI with the stored vector",
    "26": "KVM_SET_MP_STATE never runs the INIT reset",
    "27": "pending events survive KVM_SET_MP_STATE",
    "28": "KVM_SET_MP_STATE value checks (whitelist 0-4, 9; SMM checks per version)",
    "29": "KVM_RUN on an UNINITIALIZED vCPU: block, process, -EAGAIN",
    "30": "GET_VCPU_EVENTS reports sipi_vector 0; SET with VALID_SIPI_VECTOR stores it",
    "31": "smi.latched_init reads the pending INIT bit; SET_VCPU_EVENTS injects or cancels INIT",
    "32": "leaving SMM through SET_VCPU_EVENTS makes a latched INIT run",
    "33": "the newest vCPU is missing from the APIC map until a recalculation",
    "34": "KVM_SET_LAPIC (any vCPU) dirties and recalculates the map, enrolling every vCPU",
    "35": "fast path (map) vs slow path (broadcast, shorthand): the slow path reaches every APIC",
    "36": "the xAPIC ID register routes; the x2APIC ID is the vcpu_id",
    "37": "logical destination with every target software-disabled: count 0",
    "38": "MSI decoding: level forced to 1, delivery mode, destination, hint",
    "39": "KVM_SIGNAL_MSI returns the number of accepting LAPICs (0 for an empty slot)",
    "40": "ICR decoding (xAPIC ICR/ICR2, x2APIC MSR 0x830, reserved bits)",
    "41": "destination matching: physical, broadcast, logical, shorthands",
    "d7.1": "INIT discards a pending SIPI; SIPI does not discard a pending INIT",
    "d7.2": "SIPI right after INIT: RUNNABLE directly, INIT_RECEIVED never observable",
    "d7.3": "SIPI to a non-IR vCPU is dropped but its vector is kept for SET_MP_STATE(SR)",
    "d7.4": "GET_MP_STATE has side effects; GET_REGS/SREGS/VCPU_EVENTS/LAPIC do not",
    "d7.5": "SET_MP_STATE(INIT_RECEIVED) does not reset registers",
    "d7.6": "KVM_RUN in UNINITIALIZED returns -EAGAIN even after the vCPU became RUNNABLE",
    "d7.7": "a stray SIPI wakes an AP halted inside KVM_RUN",
    "d7.8": "INIT to the BSP restarts it at the reset vector at once",
    "d7.9": "INIT keeps the APIC ID and IA32_APIC_BASE (V2 re-set them)",
    "d7.10": "CR0 after INIT keeps CD/NW (V2: always 0x60000010)",
    "d7.11": "RDX after INIT = CPUID.1.EAX when a CPUID table is set, else 0x600",
    "d7.12": "the newest vCPU is absent from the APIC map; a unicast MSI to it returns 0",
    "d7.13": "SVM and VMX report different CS, SS and TR types",
    "d7.14": "smi.latched_init reads 1 for any pending INIT; SET_VCPU_EVENTS injects/cancels",
    "d8.1": "host: AP starts UNINITIALIZED",
    "d8.2": "host: after INIT, INIT_RECEIVED at 0xf000:0xfff0, base 0xffff0000",
    "d8.3": "host: after SIPI 0x10, RUNNABLE at 0x1000:0",
    "d8.4": "host: stray SIPI 0x20 ignored, later used by SET_MP_STATE(SIPI_RECEIVED)",
    "d8.5": "host: INIT to the BSP leaves it RUNNABLE at the reset vector",
    "d8.6": "host: MSI to a fresh AP returns 0 until KVM_SET_LAPIC",
    "d8.7": "host: a SIPI wakes an AP halted inside KVM_RUN",
}
REQUIRED = [str(n) for n in range(1, 42)] + [f"d7.{n}" for n in range(1, 15)]


def _sort_key(rule: str):
    if rule.startswith("d"):
        section, number = rule[1:].split(".")
        return (int(section), int(number))
    return (0, int(rule))


def load_uncovered(path: Path | str = UNCOVERED_FILE) -> dict[str, str]:
    """The data file: rule -> reason this host (or the trace format) cannot exercise it."""
    with open(path, encoding="utf-8") as stream:
        data = yaml.safe_load(stream) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must map rule numbers to reasons")
    out = {}
    for rule, reason in data.items():
        rule = str(rule)
        if rule not in RULES:
            raise ValueError(f"{path}: unknown rule {rule!r}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{path}: rule {rule} needs a reason")
        out[rule] = " ".join(reason.split())
    return out


def traces_by_rule(traces) -> dict[str, list]:
    by_rule: dict[str, list] = {rule: [] for rule in RULES}
    for trace in traces:
        for rule in trace.rules:
            by_rule.setdefault(rule, []).append(trace)
    for found in by_rule.values():
        found.sort(key=lambda t: t.name)
    return by_rule


def _trace_cell(found) -> str:
    if not found:
        return "-"
    return ", ".join(
        f"`{t.name}`" + (f" ({', '.join(t.requires)})" if t.requires else "") for t in found
    )


def _table(rules, by_rule, uncovered) -> list[str]:
    lines = ["| rule | what | traces | not exercised here |", "|---|---|---|---|"]
    for rule in rules:
        note = uncovered.get(rule, "")
        what = RULES[rule].replace("|", "\\|")
        lines.append(f"| {rule} | {what} | {_trace_cell(by_rule.get(rule, []))} | {note} |")
    return lines


def render_coverage(traces, uncovered: dict) -> str:
    """Markdown: rule -> traces for rules 1-41, quirks d7.1-14 and observations d8.N, then the
    rules this host cannot exercise with the reason, then every trace with its rules."""
    uncovered = {str(k): v for k, v in uncovered.items()}
    by_rule = traces_by_rule(traces)
    section_b = [str(n) for n in range(1, 42)]
    quirks = [f"d7.{n}" for n in range(1, 15)]
    observations = [f"d8.{n}" for n in range(1, 8)]
    extra = sorted((r for r in by_rule if r not in RULES), key=_sort_key)
    missing = [r for r in REQUIRED if not by_rule.get(r) and r not in uncovered]
    out = [
        "# Rule coverage of the built-in corpus",
        "",
        "<!-- Generated by `python -m kvmtest.coverage > docs/coverage.md`; do not edit by hand."
        " -->",
        "",
        "Which traces of `kvmtest/corpus/` check each rule of the semantics notes"
        " (`kvm-init-sipi-semantics.md`: rules 1-41 of section b, quirks d.7.1-14, host"
        " observations d.8), from each trace's `rules:` list. The last column is"
        " `kvmtest/coverage_uncovered.yaml`: why this host (Linux 6.18, `kvm_pvm`, no SMM, no"
        " nested virtualisation, no SEV-ES) or the trace format cannot exercise the rule, or the"
        " part of it that no trace reaches.",
        "",
        f"{len(traces)} traces; rules without a trace and without a reason: "
        + (", ".join(missing) if missing else "none")
        + ".",
        "",
        "## Rules (section b)",
        "",
        *_table(section_b, by_rule, uncovered),
        "",
        "## Quirks (section d.7)",
        "",
        *_table(quirks, by_rule, uncovered),
        "",
        "## Host observations (section d.8)",
        "",
        *_table(observations, by_rule, uncovered),
        "",
    ]
    if extra:
        out += ["## Other rule numbers named by traces", ""]
        out += [f"- {rule}: {_trace_cell(by_rule[rule])}" for rule in extra]
        out.append("")
    out += ["## Not exercised on this host", ""]
    gaps = sorted(uncovered, key=_sort_key)
    for rule in gaps:
        state = "partly covered" if by_rule.get(rule) else "no trace runs here"
        out.append(f"- **{rule}** ({state}): {uncovered[rule]}")
    if not gaps:
        out.append("Nothing.")
    out += ["", "## Traces", "", "| trace | rules | setup | tags |", "|---|---|---|---|"]
    for trace in sorted(traces, key=lambda t: t.name):
        setup = trace.setup
        parts = [f"{setup.vcpus} vCPUs", setup.apic, setup.guest]
        if setup.irqchip != "kernel":
            parts.append(f"{setup.irqchip} irqchip")
        if trace.requires:
            parts.append("requires " + ", ".join(trace.requires))
        out.append(
            f"| `{trace.name}` | {', '.join(trace.rules) or '-'} | {', '.join(parts)} "
            f"| {', '.join(trace.tags)} |"
        )
    out.append("")
    return "\n".join(out)


def generate() -> str:
    """The coverage document for the built-in corpus."""
    from kvmtest.suite import load_traces

    traces, errors = load_traces([])
    if errors:
        raise ValueError("the built-in corpus has malformed traces: " + "; ".join(map(str, errors)))
    return render_coverage(traces, load_uncovered())


def main(argv=None) -> int:
    try:
        text = generate()
    except (OSError, ValueError) as exc:
        print(f"kvmtest.coverage: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
