"""The step-by-step timeline of one run (`kvmtest show`, and `kvmtest run -v` per trace).

One block per step: a header (number, file:line, who performs it, the operation as YAML, and
the decoded signal of an ICR write or MSI), then two lines per vCPU: what the model holds after
the step (mp_state, where the thread is, pending INIT/SIPI, the stored SIPI vector, CS:RIP, the
guest's report) and what KVM showed at the same point (mp_state and CS:RIP only when the step
read them, the thread, the report). A KVM value that differs from the model's prediction is
marked `*`, other differing fields are listed under the vCPU; values the model does not know
because the guest ran code are `guest-owned`, values it cannot know `?`, values the step did not
read `.`. It ends with one sentence per vCPU on the final state, built from the same data.

Everything comes from TraceResult.timeline (kvmtest.trace.result.StepRecord); nothing here
runs anything. Widths fit 100 columns; with more than 4 vCPUs a step lists only the vCPUs it
touched or changed.
"""

from __future__ import annotations

import textwrap

from kvmtest import rules
from kvmtest.ops import MP_STATE_NAMES
from kvmtest.trace.result import Mismatch
from reference import GUEST

from ._format import one_line

WIDTH = 100
ALL_VCPUS_UP_TO = 4  # more vCPUs than this: each step shows only those it touched
_COLUMNS = (
    ("", 9),
    ("", 6),
    ("mp_state", 15),
    ("thread", 20),
    ("pending", 10),
    ("vector", 7),
    ("CS:RIP", 12),
)
_LEGEND = (
    "* KVM differs from the model's prediction;  . not read at this step;  "
    "? the model cannot know;  guest-owned: the guest ran code, the model does not know "
    "that register."
)
_SHOWN_FIELDS = {"mp_state", "thread", "report", "cs.selector", "rip"}


def state_name(value) -> str:
    if value is GUEST:
        return "?"
    if hasattr(value, "name"):
        return value.name
    return MP_STATE_NAMES.get(value, str(value))


def cs_rip(cs, rip) -> str:
    if cs is GUEST or rip is GUEST:
        return "guest-owned"
    if cs is None or rip is None:
        return "."
    return f"{cs:04x}:{rip:04x}"


def _thread_word(kvm_thread: str | None) -> str:
    if kvm_thread is None:
        return "(no thread)"  # the harness has not started this vCPU's thread
    word = kvm_thread.replace("reported: ", "")
    return "running (unsettled)" if word.startswith("running") else word


def _cell(text: str, width: int) -> str:
    lead = len(text) - len(text.lstrip(" "))
    text = " " * lead + one_line(text)
    return text[: width - 1] + "~" if len(text) > width else text.ljust(width)


def _row(cells) -> str:
    n = len(_COLUMNS)
    parts = [_cell(text, width) for text, (_, width) in zip(cells[:n], _COLUMNS, strict=False)]
    rest = " ".join(one_line(c) for c in cells[n:])
    return (" ".join(parts) + " " + rest)[:WIDTH].rstrip()


def _differs(record, vcpu: int, field: str) -> bool:
    if record.observed is None:
        return False
    key = (vcpu, field)
    if key not in record.predicted and key not in record.observed:
        return False
    want = record.predicted.get(key, "none" if field == "report" else "absent")
    got = record.observed.get(key, "none" if field == "report" else "absent")
    return want is not GUEST and want != got


def _show(field: str, value) -> str:
    return Mismatch(0, "", None, field, value, value).show(value)


def _vcpu_lines(record, view) -> list[str]:
    v = view.vcpu
    report = record.predicted.get((v, "report"), "-")
    model = [
        f"  vCPU {v}",
        "model",
        state_name(view.mp_state),
        view.thread,
        view.pending or "-",
        f"{view.sipi_vector:#04x}",
        cs_rip(view.cs_selector, view.rip),
        report,
    ]
    lines = [_row(model)]
    if record.observed is None:
        return lines
    obs = record.observed

    def mark(field: str, text: str) -> str:
        return ("*" + text) if _differs(record, v, field) else text

    mp = obs.get((v, "mp_state"))
    if (v, "cs.selector") in obs or (v, "rip") in obs:
        where = cs_rip(obs.get((v, "cs.selector")), obs.get((v, "rip")))
    else:
        where = "."
    if _differs(record, v, "cs.selector") or _differs(record, v, "rip"):
        where = "*" + where
    kvm = [
        "",
        "KVM",
        mark("mp_state", "." if mp is None else state_name(mp)),
        mark("thread", _thread_word((record.threads or {}).get(v))),
        "",
        "",
        where,
        mark("report", obs.get((v, "report"), "-")),
    ]
    lines.append(_row(kvm))
    keys = sorted(k for k in set(record.predicted) | set(obs) if k[0] == v)
    for _, field in keys:
        if field in _SHOWN_FIELDS or not _differs(record, v, field):
            continue
        want = record.predicted.get((v, field), "absent")
        got = obs.get((v, field), "absent")
        lines.append(
            f"{'':16}* {field}: model {_show(field, want)}, KVM {_show(field, got)}"[:WIDTH]
        )
    return lines


def _vm_lines(record) -> list[str]:
    """Results that belong to no vCPU (an MSI's delivery count)."""
    lines = []
    keys = sorted(k for k in set(record.predicted) | set(record.observed or {}) if k[0] is None)
    for _, field in keys:
        want = record.predicted.get((None, field), "absent")
        line = f"  VM      {field}: model {_show(field, want)}"
        if record.observed is not None:
            got = record.observed.get((None, field), "absent")
            mark = "*" if _differs(record, None, field) else ""
            line += f", KVM {mark}{_show(field, got)}"
        lines.append(line)
    return lines


def _touched(record, previous) -> set[int]:
    keys = set(record.predicted) | set(record.observed or {})
    touched = {v for v, _ in keys if v is not None}
    if record.signal is not None and record.signal.targets:
        touched |= set(record.signal.targets)
    if record.thread.startswith("vcpu"):
        touched.add(int(record.thread[4:]))
    if previous is not None:
        touched |= {a.vcpu for a, b in zip(record.model, previous.model, strict=True) if a != b}
    return touched


def step_header(record) -> list[str]:
    where = record.location.rsplit("/", 1)[-1]
    head = f"step {record.index + 1} at {where}, {record.thread}: {one_line(record.step)}"
    lines = [head if len(head) <= WIDTH else head[: WIDTH - 1] + "~"]
    if record.signal is not None:
        lines.append(f"  sends {record.signal.label}")
    return lines


def render_timeline(result) -> str:
    """The whole table of `result.timeline`, then the final state; '' without a timeline."""
    records = result.timeline
    if not records:
        return ""
    lines = [_row([name for name, _ in _COLUMNS] + ["report"])]
    previous = None
    for record in records:
        lines.extend(step_header(record))
        many = len(record.model) > ALL_VCPUS_UP_TO
        shown = _touched(record, previous) if many else {view.vcpu for view in record.model}
        for view in record.model:
            if view.vcpu in shown:
                lines.extend(_vcpu_lines(record, view))
        hidden = [view.vcpu for view in record.model if view.vcpu not in shown]
        if hidden:
            lines.append(f"  (vCPUs {_ranges(hidden)} unchanged)")
        lines.extend(_vm_lines(record))
        previous = record
    if result.outcomes:
        lines.append("concurrent block (explored on the model, run once on KVM):")
        for label in result.outcomes:
            allowed = "allowed by the model" if result.allowed.get(label) else "NOT allowed"
            lines.append(f"  KVM showed: {label}  ({allowed})")
        others = [label for label, ok in result.allowed.items() if ok]
        lines.append(f"  the model allows {len(others)} outcome(s)")
    lines.append("")
    lines.append("final state:")
    for sentence in final_sentences(result):
        lines.extend(textwrap.wrap(sentence, WIDTH, initial_indent="  ", subsequent_indent="    "))
    if records[0].observed is not None:
        lines.append("")
        lines.extend(textwrap.wrap(_LEGEND, WIDTH))
    return "\n".join(lines)


def wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH - len(indent) - 2) or [""]


def _ranges(numbers) -> str:
    out, start, prev = [], None, None
    for n in list(numbers) + [None]:
        if start is None:
            start = prev = n
        elif n is not None and n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = n
    return ", ".join(out)


# ----------------------------------------------------------------------------------------------
# The final state in words


def model_sentence(view) -> str:
    """What the model's state of one vCPU means for its future, in one sentence."""
    v, name = view.vcpu, state_name(view.mp_state)
    init, sipi = "INIT" in view.pending, "SIPI" in view.pending
    vector = view.sipi_vector
    landing = f"{vector << 8:04x}:0000"
    if name == "UNINITIALIZED":
        text = f"vCPU {v} is UNINITIALIZED (it has had no INIT)"
        if init and sipi:
            text += f"; INIT and SIPI {vector:#x} are pending: it starts at {landing} when next run"
        elif init:
            text += "; an INIT is pending: it becomes INIT_RECEIVED and then waits for a SIPI"
        elif sipi:
            text += f"; the pending SIPI {vector:#x} will be dropped: it needs an INIT first"
        else:
            text += "; it waits for INIT and SIPI"
    elif name == "INIT_RECEIVED":
        text = f"vCPU {v} waits for a SIPI in INIT_RECEIVED"
        if sipi:
            text += f"; SIPI {vector:#x} is pending: it starts at {landing} when next run"
        else:
            text += "; no SIPI is pending: it will never start unless one is sent"
    elif name == "RUNNABLE":
        where = cs_rip(view.cs_selector, view.rip)
        if where == "guest-owned":
            text = f"vCPU {v} is RUNNABLE and runs its own code (CS:RIP guest-owned)"
        else:
            text = f"vCPU {v} is RUNNABLE at {where}"
            if view.rip == 0 and view.cs_selector == vector << 8:
                text += f" (the SIPI {vector:#x} landing page)"
            elif (view.cs_selector, view.rip) == (0xF000, 0xFFF0):
                text += " (the reset vector)"
        text += _pending_tail(init, sipi, vector)
    elif name == "HALTED":
        text = f"vCPU {v} is HALTED: an interrupt, INIT or SIPI wakes it"
        text += _pending_tail(init, sipi, vector)
    else:
        text = f"vCPU {v} is in {name}" + _pending_tail(init, sipi, vector)
    return f"{text}; its thread is {view.thread}."


def _pending_tail(init: bool, sipi: bool, vector: int) -> str:
    if init:
        return "; an INIT is pending: it is reset when next run"
    if sipi:
        return f"; a pending SIPI {vector:#x} will be dropped (not in INIT_RECEIVED)"
    return ""


def kvm_facts(records) -> dict:
    """vcpu -> what KVM last showed: mp_state, CS:RIP, thread, report, with their step."""
    facts: dict = {}
    for record in records:
        if record.observed is None:
            continue
        for (vcpu, field), value in record.observed.items():
            if vcpu is None:
                continue
            got = facts.setdefault(vcpu, {})
            if field in ("mp_state", "report", "cs.selector", "rip"):
                got[field] = (value, record.index)
        for vcpu, where in (record.threads or {}).items():
            facts.setdefault(vcpu, {})["thread"] = (where, record.index)
    return facts


def kvm_sentence(vcpu: int, facts: dict) -> str:
    """What KVM last showed of one vCPU, in one sentence (only what it was seen to do)."""
    got = facts.get(vcpu, {})
    parts = []
    if "mp_state" in got:
        value, step = got["mp_state"]
        parts.append(f"KVM last read mp_state {state_name(value)} (step {step + 1})")
    else:
        parts.append("KVM never read its mp_state")
    if "cs.selector" in got and "rip" in got:
        (cs, step), (rip, _) = got["cs.selector"], got["rip"]
        parts.append(f"CS:RIP {cs_rip(cs, rip)} (step {step + 1})")
    if "report" in got:
        value, step = got["report"]
        parts.append(f"the guest last reported '{value}' (step {step + 1})")
    if "thread" in got:
        parts.append(f"its thread was {_thread_word(got['thread'][0])} at the end")
    return f"vCPU {vcpu}: " + ", ".join(parts) + "."


def final_sentences(result) -> list[str]:
    records = result.timeline
    if not records:
        return []
    last = records[-1]
    out = []
    facts = kvm_facts(records)
    for view in last.model:
        out.append("model: " + model_sentence(view))
        if last.observed is not None:
            out.append("KVM:   " + kvm_sentence(view.vcpu, facts))
    if last.observed is not None:
        n = len(result.mismatches)
        out.append(
            "KVM and the model agree at every step."
            if not n
            else f"KVM and the model differ in {n} place(s) (marked *)."
        )
    return out


# ----------------------------------------------------------------------------------------------
# Mismatches with their rules


def rule_lines(mismatch, trace_rules, indent: str) -> list[str]:
    """'rule 22: title (docs/semantics.md#rule-22)' for each rule of the trace that a mismatch
    of this field concerns (kvmtest.rules.rules_for)."""
    out = []
    for rule in rules.rules_for(mismatch.field, trace_rules):
        out += textwrap.wrap(
            rules.describe(rule), WIDTH, initial_indent=indent, subsequent_indent=indent + "    "
        )
    return out


def mismatch_lines(result, indent: str) -> list[str]:
    lines = []
    for m in result.mismatches:
        where = f"step {m.step + 1} at {one_line(m.location)}"
        vcpu = f"vcpu {m.vcpu}" if m.vcpu is not None else "VM"
        lines.append(f"{indent}{where}  {vcpu}  {one_line(m.field)}")
        expected, observed = m.sides
        lines.append(f"{indent}  {expected:<17} {one_line(m.show(m.expected))}")
        lines.append(f"{indent}  {observed:<17} {one_line(m.show(m.observed))}")
        lines += rule_lines(m, result.rules, indent + "  ")
    return lines
